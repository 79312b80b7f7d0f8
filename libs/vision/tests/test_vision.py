"""lineloop.vision: decoding limits, quality statistics, model input, synthetic frames."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFilter

from lineloop.vision import (
    CLASSES,
    AppleRenderer,
    DecodeLimits,
    Drift,
    Failure,
    ImageRejected,
    decode_image,
    drift_strength,
    encode_jpeg,
    encode_png,
    quality_stats,
    to_model_input,
)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a few bytes of image data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_decodes_jpeg_and_png_to_rgb():
    frame = AppleRenderer(64, seed=3).render(0).image
    for data, fmt, ext in ((encode_jpeg(frame), "JPEG", "jpg"), (encode_png(frame), "PNG", "png")):
        decoded = decode_image(data)
        assert (decoded.format, decoded.extension, decoded.width, decoded.height) == (fmt, ext, 64, 64)
        assert decoded.image.mode == "RGB"


def test_decompression_bomb_refused_from_header():
    with pytest.raises(ImageRejected) as err:
        decode_image(png_header_only(20000, 20000))
    assert err.value.failure is Failure.TOO_LARGE
    # Under Pillow's own bomb limit but over ours: still refused before decoding.
    with pytest.raises(ImageRejected) as err:
        decode_image(png_header_only(5000, 5000), DecodeLimits(max_pixels=1_000_000))
    assert err.value.failure is Failure.TOO_LARGE and "5000x5000" in err.value.detail


@pytest.mark.parametrize(
    ("data", "failure"),
    [
        (b"", Failure.UNDECODABLE),
        (b"not an image at all", Failure.UNDECODABLE),
        ("truncated", Failure.UNDECODABLE),
        ("gif", Failure.UNSUPPORTED_FORMAT),
        ("big", Failure.TOO_LARGE),
    ],
)
def test_bad_bytes_get_a_specific_failure(data, failure):
    image = AppleRenderer(64, seed=1).render(1).image
    if data == "truncated":
        data = encode_jpeg(image)[:400]
    elif data == "gif":
        out = io.BytesIO()
        image.save(out, format="GIF")
        data = out.getvalue()
    elif data == "big":
        data = encode_jpeg(image)
        with pytest.raises(ImageRejected) as err:
            decode_image(data, DecodeLimits(max_bytes=len(data) - 1))
        assert err.value.failure is failure
        return
    with pytest.raises(ImageRejected) as err:
        decode_image(data)
    assert err.value.failure is failure


def test_quality_stats_follow_the_image():
    flat = np.full((32, 32, 3), 128, np.uint8)
    q = quality_stats(flat)
    assert q.brightness_mean == pytest.approx(128, abs=0.5)
    assert q.brightness_std == pytest.approx(0, abs=1e-3) and q.sharpness == pytest.approx(0, abs=1e-3)
    assert q.saturation_share == 0
    frame = AppleRenderer(128, seed=2).render(0, label="ok").image
    sharp, blurred = quality_stats(frame), quality_stats(frame.filter(ImageFilter.GaussianBlur(3)))
    assert blurred.sharpness < sharp.sharpness / 4
    clipped = flat.copy()
    clipped[:16] = 255
    assert quality_stats(clipped).saturation_share == pytest.approx(0.5)
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 200
    q = quality_stats(red)
    assert (q.mean_r, q.mean_g, q.mean_b) == (pytest.approx(200), 0, 0)


def test_model_input_is_chw_float_0_to_1():
    image = Image.new("RGB", (40, 20), (255, 0, 51))
    x = to_model_input(image, 16)
    assert x.shape == (3, 16, 16) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(x[:, 5, 5], [1.0, 0.0, 0.2], atol=1e-6)
    np.testing.assert_array_equal(to_model_input(np.asarray(image), 16), x)


def test_renderer_is_deterministic_and_covers_classes():
    a, b = AppleRenderer(64, seed=7), AppleRenderer(64, seed=7)
    for i in range(3):
        fa, fb = a.render(i, camera_index=1), b.render(i, camera_index=1)
        assert fa.label == fb.label
        np.testing.assert_array_equal(np.asarray(fa.image), np.asarray(fb.image))
    assert not np.array_equal(np.asarray(a.render(0).image), np.asarray(AppleRenderer(64, seed=8).render(0).image))
    labels = {AppleRenderer(32, seed=1, shares={"ok": 1, "rot": 1}).render(i).label for i in range(40)}
    assert labels == {"ok", "rot"}
    with pytest.raises(ValueError, match="unknown classes"):
        AppleRenderer(32, shares={"mould": 1})
    assert set(CLASSES) == {"ok", "bruise", "rot", "scab"}


def test_drift_modes_move_the_statistics_they_should():
    renderer = AppleRenderer(96, seed=5)
    base = quality_stats(renderer.render(0, label="ok").image)
    lens = quality_stats(renderer.render(0, drift=Drift.DIRTY_LENS, strength=1.0, label="ok").image)
    assert lens.sharpness < base.sharpness / 4 and lens.brightness_mean > base.brightness_mean
    light = quality_stats(renderer.render(0, drift=Drift.LIGHTING, strength=1.0, label="ok").image)
    assert light.mean_b < base.mean_b * 0.8
    shifted = renderer.render(0, drift=Drift.CAMERA_SHIFT, strength=1.0, label="ok")
    assert not np.array_equal(np.asarray(shifted.image), np.asarray(renderer.render(0, label="ok").image))
    assert renderer.render(0, drift=Drift.NEW_VARIETY, strength=1.0).variety == "golden-purple"
    assert drift_strength(Drift.DIRTY_LENS, -1) == 0 and 0 < drift_strength(Drift.DIRTY_LENS, 10) < 1
    assert drift_strength(Drift.LIGHTING, 0) == 1
