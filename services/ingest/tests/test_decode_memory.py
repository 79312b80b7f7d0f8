"""Decode memory under a burst of large frames: the pixel budget bounds what ingest holds at once."""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import re
from pathlib import Path

import pytest
from PIL import Image

from lineloop.ingest import pipeline as pipeline_module
from lineloop.ingest.pipeline import Pipeline, Refused
from lineloop.ingest.settings import IngestSettings
from lineloop.ingest.testing import (
    EventReader,
    frame,
    ingest_settings,
    object_store,
    png_header_only,
    publish,
    running_ingest,
    skip_group_to_end,
    uid,
)
from lineloop.v1.common_pb2 import ObjectRef
from lineloop.v1.events_pb2 import RejectReason
from lineloop.vision import AppleRenderer, PixelBudget, encode_jpeg

R = RejectReason
WIDTH, HEIGHT = 4096, 3072  # 12.6 MP: the pixel cap of this test's ingest
LARGE_FRAMES = 6


def large_jpeg(seed: int) -> bytes:
    """A camera-like frame at the cap: a rendered apple scaled up, with sensor noise."""
    base = AppleRenderer(256, seed=seed).render(seed).image.resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR)
    noise = Image.merge("RGB", [Image.effect_noise((WIDTH, HEIGHT), 12).point(lambda v: v - 128)] * 3)
    data = encode_jpeg(Image.blend(base, noise, 0.05), 85)
    return data


def unique(jpeg: bytes, tag: str) -> bytes:
    """The same pixels under a new sha256: a JPEG comment after the SOI marker."""
    comment = tag.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + jpeg[2:]


def _status_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def reset_peak_rss() -> int:
    """Give freed heap back to the OS, reset the peak-RSS mark (Linux clear_refs 5); the RSS now, in bytes."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc_trim(0)  # otherwise memory freed earlier is reused without showing in RSS
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") * 1024


def peak_rss() -> int:
    return _status_kib("VmHWM") * 1024


async def test_burst_of_frames_at_the_cap_holds_at_most_the_budget(stack, tmp_path, line, monkeypatch):
    budgets: list[PixelBudget] = []

    def recorded_budget(total: int) -> PixelBudget:
        budgets.append(PixelBudget(total))
        return budgets[-1]

    monkeypatch.setattr(pipeline_module, "PixelBudget", recorded_budget)
    pixels = WIDTH * HEIGHT
    settings = ingest_settings(stack, tmp_path / "ingest.db", max_image_pixels=pixels, decode_pixel_budget=2 * pixels)
    base = large_jpeg(seed=1)
    store = object_store(stack)
    uploads = []
    for i in range(LARGE_FRAMES):
        data = unique(base, uid(f"frame{i}"))
        uploads.append(store.put_bytes("lineloop-frames", f"uploads/{uid('large')}.jpg", data, "image/jpeg"))
    truncated = store.put_bytes("lineloop-frames", f"uploads/{uid('cut')}.jpg", base[: len(base) // 2], "image/jpeg")
    large = [frame(line=line, image_ref=ObjectRef(bucket=u.bucket, key=u.key, sha256=u.sha256)) for u in uploads]
    refused = [
        # Over the cap by one row: refused from the header, before it holds any budget.
        (frame(png_header_only(WIDTH, HEIGHT + 1), line=line), R.REJECT_REASON_IMAGE_TOO_LARGE),
        # At the cap but cut short: holds its pixels while it fails to decode, then gives them back.
        (frame(line=line, image_ref=ObjectRef(bucket=truncated.bucket, key=truncated.key, sha256=truncated.sha256)),
         R.REJECT_REASON_UNDECODABLE_IMAGE),
    ]
    burst = large[:3] + [f for f, _ in refused] + large[3:]
    del base

    await skip_group_to_end(stack, settings.consumer_group)
    async with running_ingest(settings), EventReader(stack) as events:
        (budget,) = budgets
        start_rss = reset_peak_rss()
        await publish(stack, burst)
        await events.wait_for([f.frame_id for f in burst], timeout=180)
        grown = peak_rss() - start_rss

    for f in large:
        (ingested,) = events.ingested[f.frame_id]
        assert (ingested.width, ingested.height) == (WIDTH, HEIGHT) and ingested.quality.sharpness > 0
        assert f.frame_id not in events.rejected
    for f, reason in refused:
        (rejected,) = events.rejected[f.frame_id]
        assert rejected.reason == reason and rejected.detail, (R.Name(reason), rejected.detail)
    # Never more than the budget held at once, at least one frame at the cap held it, all given back.
    assert pixels <= budget.peak <= budget.total == 2 * pixels
    assert budget.in_use == 0
    # The process's own peak agrees: 8 frames arrived at once, yet its RSS grew by about what two
    # decoded frames take (4 bytes a pixel, 8 while converting), plus the fetched JPEGs and clients.
    # Without the budget and with whole-frame statistics it grew by ~2.5 times this bound.
    bound = 8 * budget.total + 64 * 2**20
    assert grown < bound, f"peak RSS grew {grown / 2**20:.0f} MiB, bound {bound / 2**20:.0f} MiB"


async def test_a_frame_over_the_whole_budget_is_refused_not_queued():
    # Settings refuse a cap above the budget; the pipeline still refuses rather than wait for ever.
    pipeline = Pipeline(IngestSettings(), objects=None, scorer=None, db=None)
    try:
        pipeline.decode_budget = PixelBudget(63 * 64)
        image = io.BytesIO()
        AppleRenderer(64, seed=1).render(0).image.save(image, format="JPEG")
        outcome = await pipeline.prepare(frame(image.getvalue(), line="line-a"))
        assert isinstance(outcome, Refused) and outcome.reason == R.REJECT_REASON_IMAGE_TOO_LARGE
        assert "64x64" in outcome.detail and "decode budget of 4032 pixels" in outcome.detail
        assert pipeline.decode_budget.in_use == 0
    finally:
        pipeline.close()


def test_a_pixel_cap_above_the_budget_is_a_configuration_error():
    with pytest.raises(ValueError, match="never decode"):
        IngestSettings(max_image_pixels=50_000_000, decode_pixel_budget=40_000_000)
