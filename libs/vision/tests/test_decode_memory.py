"""Decode memory: the pixel budget, header-first decoding, full-resolution statistics in bounded memory."""

from __future__ import annotations

import asyncio
import io
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFilter

from lineloop.vision import (
    AppleRenderer,
    DecodeLimits,
    Failure,
    ImageRejected,
    OverBudget,
    PixelBudget,
    encode_jpeg,
    load_image,
    open_image,
    quality_stats,
)
from lineloop.vision import quality as quality_module


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def reference_stats(image: Image.Image) -> dict[str, float]:
    """The statistics computed the obvious way, on whole-frame arrays (what ingest did before)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    luma = np.asarray(image.convert("RGB").convert("L"), dtype=np.float64)
    if min(luma.shape) >= 3:
        lap = luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4 * luma[1:-1, 1:-1]
        sharpness = float(lap.var())
    else:
        sharpness = 0.0
    raw = np.asarray(image.convert("RGB"))
    return dict(
        brightness_mean=float(luma.mean()), brightness_std=float(luma.std()), contrast=float(luma.std() / 255),
        sharpness=sharpness, mean_r=float(rgb[..., 0].mean()), mean_g=float(rgb[..., 1].mean()),
        mean_b=float(rgb[..., 2].mean()), saturation_share=float(((raw == 0) | (raw == 255)).mean()),
    )


def noisy_frame(width: int, height: int, seed: int = 0) -> Image.Image:
    """A rendered apple scaled up with sensor-like noise and some clipping: a camera-like large frame."""
    base = AppleRenderer(256, seed=seed).render(seed).image.resize((width, height), Image.Resampling.BICUBIC)
    rng = np.random.default_rng(seed)
    pixels = np.asarray(base, dtype=np.int16) + rng.normal(0, 8, (height, width, 3)).astype(np.int16)
    pixels[: height // 20] += 80  # a glare band: clipped values
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


@pytest.mark.parametrize(
    ("width", "height"), [(1, 1), (2, 5), (3, 3), (8192, 8), (8, 8192), (257, 131), (640, 480)]
)
@pytest.mark.parametrize("strip_pixels", [1, 300, 1 << 19])
def test_statistics_in_strips_equal_the_whole_frame_ones(monkeypatch, width, height, strip_pixels):
    # Strips of one row, of a few rows with boundaries anywhere, and the default (one strip here).
    monkeypatch.setattr(quality_module, "STRIP_PIXELS", strip_pixels)
    image = noisy_frame(width, height, seed=width + height)
    got, want = quality_stats(image).as_dict(), reference_stats(image)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-9), name


def test_statistics_still_see_blur_and_clipping_at_full_resolution():
    # The reasons the statistics are not taken from a thumbnail: both shrink with downscaling.
    frame = noisy_frame(1600, 1200)
    full, half = quality_stats(frame), quality_stats(frame.reduce(2))
    assert half.sharpness < full.sharpness / 2 and half.saturation_share < full.saturation_share
    blurred = quality_stats(frame.filter(ImageFilter.GaussianBlur(1.5)))
    assert blurred.sharpness < full.sharpness / 4
    # Means survive downscaling and do not depend on how the frame was cut.
    assert half.brightness_mean == pytest.approx(full.brightness_mean, abs=0.5)


def test_statistics_memory_is_a_strips_not_the_frames():
    frame = noisy_frame(4000, 3000)  # 12 MP: the whole-frame version traced ~150 MB here
    quality_stats(noisy_frame(64, 64))  # imports and caches out of the measurement
    tracemalloc.start()
    try:
        quality_stats(frame)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # A strip is STRIP_PIXELS pixels: luma (1 byte), an int32 copy and the Laplacian's int32
    # temporaries, ~17 bytes a strip pixel; the frame's size does not enter.
    assert peak < 32 * quality_module.STRIP_PIXELS, f"{peak / 2**20:.1f} MiB traced"


def test_header_is_read_without_decoding_and_limits_come_first():
    header = open_image(png_header_only(7000, 5000), DecodeLimits(max_pixels=40_000_000))
    assert (header.format, header.width, header.height, header.pixels) == ("PNG", 7000, 5000, 35_000_000)
    with pytest.raises(ImageRejected) as err:  # a 35 MP claim on 60 bytes of data: does not decode
        load_image(header)
    assert err.value.failure is Failure.UNDECODABLE
    with pytest.raises(ImageRejected) as err:
        open_image(png_header_only(7000, 6000), DecodeLimits(max_pixels=40_000_000))
    assert err.value.failure is Failure.TOO_LARGE and "42000000 pixels" in err.value.detail


def test_pillows_own_bomb_limit_is_a_refusal_with_a_reason():
    # Limits configured above Pillow's: its DecompressionBombError still refuses, as TOO_LARGE.
    assert 20000 * 20000 > 2 * Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageRejected) as err:
        open_image(png_header_only(20000, 20000), DecodeLimits(max_side=100_000, max_pixels=10**10))
    assert err.value.failure is Failure.TOO_LARGE and "decompression bomb" in err.value.detail


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGB"])
def test_loaded_image_is_rgb_and_the_source_is_freed(mode):
    source = AppleRenderer(64, seed=1).render(0).image.convert(mode)
    out = io.BytesIO()
    source.save(out, format="JPEG")
    header = open_image(out.getvalue())
    decoded = load_image(header)
    assert decoded.image.mode == "RGB" and decoded.image.size == (64, 64)
    if mode != "RGB":  # the converted-from image holds no pixels any more
        with pytest.raises(ValueError, match="closed image"):
            header.image.getpixel((0, 0))
    assert quality_stats(decoded.image).brightness_mean > 0
    assert encode_jpeg(decoded.image)


async def test_budget_never_exceeds_its_total_and_serves_in_order():
    budget = PixelBudget(100)
    order: list[str] = []
    release = {name: asyncio.Event() for name in "abcd"}

    async def frame(name: str, pixels: int) -> None:
        async with budget.hold(pixels):
            order.append(name)
            assert budget.in_use <= budget.total
            await release[name].wait()

    a = asyncio.create_task(frame("a", 60))
    await asyncio.sleep(0)
    big = asyncio.create_task(frame("b", 90))  # waits for a
    await asyncio.sleep(0)
    small = asyncio.create_task(frame("c", 20))  # would fit beside a, but queues behind b: b is not starved
    await asyncio.sleep(0)
    assert order == ["a"] and budget.in_use == 60
    release["a"].set()
    await asyncio.sleep(0.01)
    assert order == ["a", "b"] and budget.in_use == 90
    release["b"].set()
    await asyncio.sleep(0.01)
    assert order == ["a", "b", "c"] and budget.in_use == 20
    release["c"].set()
    await asyncio.gather(a, big, small)
    assert budget.in_use == 0
    assert budget.peak == 90 and budget.waits == 2


async def test_a_frame_larger_than_the_whole_budget_is_refused_not_queued():
    budget = PixelBudget(100)
    async with budget.hold(100):
        with pytest.raises(OverBudget) as err:
            async with budget.hold(101):
                pass
    assert "101 pixels" in str(err.value) and budget.in_use == 0 and budget.waits == 0


async def test_a_cancelled_waiter_gives_its_place_back():
    budget = PixelBudget(100)
    held = asyncio.Event()
    done = asyncio.Event()

    async def holder() -> None:
        async with budget.hold(80):
            held.set()
            await done.wait()

    first = asyncio.create_task(holder())
    await held.wait()
    waiting_big = asyncio.create_task(budget.acquire(50))
    await asyncio.sleep(0)
    queued_small = asyncio.create_task(budget.acquire(20))  # behind the big one
    await asyncio.sleep(0)
    waiting_big.cancel()
    await asyncio.sleep(0.01)
    # The cancelled head left the queue, so the small one that fits went ahead.
    assert queued_small.done() and budget.in_use == 100
    budget.release(20)
    done.set()
    await first
    assert budget.in_use == 0 and not budget._waiters
