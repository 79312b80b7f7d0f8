"""Images a camera or a misconfigured gateway might send, to vision's decode and through
ingest's real pipeline (gRPC UploadFrames: fetch, decode, quality, store, index).

Each is either ingested correctly (the stored frame has the image's true size) or refused
with a specific reason. Named cases carry the outcome they must have; hypothesis adds
bit flips, truncations and splices of valid images, which must decode or be refused.
"""

from __future__ import annotations

import io
import struct
import uuid
import zlib
from datetime import UTC, datetime

import pytest
from hypothesis import strategies as st
from PIL import Image

from lineloop.v1 import ingest_pb2, ingest_pb2_grpc
from lineloop.v1.events_pb2 import FrameCaptured, RejectReason
from lineloop.vision import DecodeLimits, Failure, ImageRejected, decode_image
from tests.fuzz.harness import run_cases, run_cases_async
from tests.fuzz.services import hosted

R = RejectReason
LIMITS = DecodeLimits()


def save(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def gradient(mode: str, size: tuple[int, int]) -> Image.Image:
    rgb = Image.linear_gradient("L").resize(size).convert("RGB")
    return rgb.convert(mode) if mode != "RGB" else rgb


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(width: int, height: int, *, depth: int = 8, color: int = 2, rows: bytes | None = None, extra: bytes = b"") -> bytes:
    """A PNG written by hand: any header, pixel rows compressed in a stream (bombs cost no memory here)."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    row = b"\0" + bytes(width * channels * depth // 8)
    if rows is None:
        z = zlib.compressobj(9)
        data = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    else:
        data = zlib.compress(rows)
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def jpeg_claiming(width: int, height: int) -> bytes:
    """A valid small JPEG whose SOF0 header is patched to claim width x height."""
    data = bytearray(save(gradient("RGB", (16, 16)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def exif_bomb() -> bytes:
    """A JPEG whose EXIF says 65535 entries and whose IFD chain points back at itself."""
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 0xFFFF) + b"\x00" * 12 * 200 + struct.pack("<I", 8)
    data = save(gradient("RGB", (16, 16)), "JPEG")
    app1 = b"Exif\x00\x00" + tiff
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]


def animated(fmt: str) -> bytes:
    frames = [gradient("RGB", (32, 32)).rotate(a) for a in (0, 90, 180)]
    return save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


JPEG = save(gradient("RGB", (64, 48)), "JPEG")
PNG = save(gradient("RGB", (64, 48)), "PNG")
OK, REFUSED = "ok", "refused"
# name -> (bytes, expected: (OK, (w, h)) or (REFUSED, Failure))
CASES: dict[str, tuple[bytes, tuple]] = {
    "zero_bytes": (b"", (REFUSED, Failure.UNDECODABLE)),
    "truncated_jpeg_header": (JPEG[:20], (REFUSED, Failure.UNDECODABLE)),
    "truncated_jpeg_half": (JPEG[: len(JPEG) // 2], (REFUSED, Failure.UNDECODABLE)),
    "truncated_png_half": (PNG[: len(PNG) // 2], (REFUSED, Failure.UNDECODABLE)),
    "wrong_magic_jpeg": (b"\x00\x00" + JPEG[2:], (REFUSED, Failure.UNDECODABLE)),
    "wrong_magic_png": (b"\x89PNX" + PNG[4:], (REFUSED, Failure.UNDECODABLE)),
    "text_not_image": (b"hello, this is not an image\n" * 10, (REFUSED, Failure.UNDECODABLE)),
    "png_claims_100000x100000": (png(100_000, 100_000, rows=b"\0" * 64), (REFUSED, Failure.TOO_LARGE)),
    "png_claims_8193x1": (png(8193, 1), (REFUSED, Failure.TOO_LARGE)),
    "png_claims_0x10": (png(0, 10, rows=b""), (REFUSED, Failure.UNDECODABLE)),
    "jpeg_claims_65535x65535": (jpeg_claiming(65535, 65535), (REFUSED, Failure.TOO_LARGE)),
    "jpeg_claims_8000x8000": (jpeg_claiming(8000, 8000), (REFUSED, Failure.TOO_LARGE)),
    "decompression_bomb_png_30000x30000": (png(30_000, 30_000, color=0), (REFUSED, Failure.TOO_LARGE)),
    "bomb_within_limits_png_4000x4000": (png(4000, 4000, color=0), (OK, (4000, 4000))),
    "polyglot_jpeg_plus_zip": (JPEG + b"PK\x03\x04" + bytes(26) + b"evil.sh#!/bin/sh\n", (OK, (64, 48))),
    "polyglot_png_plus_html": (PNG + b"<html><script>alert(1)</script></html>", (OK, (64, 48))),
    "polyglot_gif_js": (b"GIF89a/*" + bytes(10) + b"*/=alert(1);", (REFUSED, Failure.UNDECODABLE)),
    "exif_bomb_jpeg": (exif_bomb(), (OK, (16, 16))),
    "png_16bit_grey": (save(Image.new("I;16", (40, 30), 40000), "PNG"), (OK, (40, 30))),
    "png_16bit_rgb": (png(20, 10, depth=16, color=2), (OK, (20, 10))),
    "png_16bit_rgba": (png(20, 10, depth=16, color=6), (OK, (20, 10))),
    "png_greyscale": (save(gradient("L", (33, 17)), "PNG"), (OK, (33, 17))),
    "jpeg_greyscale": (save(gradient("L", (33, 17)), "JPEG"), (OK, (33, 17))),
    "png_palette": (save(gradient("P", (30, 20)), "PNG"), (OK, (30, 20))),
    "png_1bit": (save(gradient("1", (30, 20)), "PNG"), (OK, (30, 20))),
    "jpeg_cmyk": (save(gradient("CMYK", (30, 20)), "JPEG"), (OK, (30, 20))),
    "png_rgba": (save(gradient("RGBA", (30, 20)), "PNG"), (OK, (30, 20))),
    "png_grey_alpha": (save(gradient("LA", (30, 20)), "PNG"), (OK, (30, 20))),
    "jpeg_progressive": (save(gradient("RGB", (64, 48)), "JPEG", progressive=True), (OK, (64, 48))),
    "animated_png": (animated("PNG"), (OK, (32, 32))),
    "animated_gif": (animated("GIF"), (REFUSED, Failure.UNSUPPORTED_FORMAT)),
    "webp": (save(gradient("RGB", (30, 20)), "WEBP"), (REFUSED, Failure.UNSUPPORTED_FORMAT)),
    "bmp": (save(gradient("RGB", (30, 20)), "BMP"), (REFUSED, Failure.UNSUPPORTED_FORMAT)),
    "tiff": (save(gradient("RGB", (30, 20)), "TIFF"), (REFUSED, Failure.UNSUPPORTED_FORMAT)),
    "jpeg_1x1": (save(gradient("RGB", (1, 1)), "JPEG"), (OK, (1, 1))),
    "png_1x1": (save(gradient("RGB", (1, 1)), "PNG"), (OK, (1, 1))),
    "png_8192x8": (save(gradient("RGB", (8192, 8)), "PNG"), (OK, (8192, 8))),
    "jpeg_8x8192": (save(gradient("RGB", (8, 8192)), "JPEG"), (OK, (8, 8192))),
    "png_trailing_chunks_after_iend": (PNG + chunk(b"tEXt", b"x" * 1000), (OK, (64, 48))),
    "png_bad_crc": (PNG[:29] + b"\x00\x00\x00\x00" + PNG[33:], (REFUSED, Failure.UNDECODABLE)),
}
FAILURE_REASON = {Failure.UNDECODABLE: R.REJECT_REASON_UNDECODABLE_IMAGE, Failure.UNSUPPORTED_FORMAT:
                  R.REJECT_REASON_UNSUPPORTED_FORMAT, Failure.TOO_LARGE: R.REJECT_REASON_IMAGE_TOO_LARGE}


def decode_outcome(data: bytes) -> tuple:
    try:
        decoded = decode_image(data, LIMITS)
    except ImageRejected as rej:
        assert rej.detail, rej
        return REFUSED, rej.failure
    assert decoded.image.mode == "RGB" and decoded.image.size == (decoded.width, decoded.height)
    return OK, (decoded.width, decoded.height)


@pytest.mark.parametrize("name", sorted(CASES))
def test_named_image_decodes_or_is_refused_as_expected(name):
    data, expected = CASES[name]
    assert decode_outcome(data) == expected


def mutations() -> st.SearchStrategy[bytes]:
    """Bit flips, truncations, splices and byte runs over valid JPEG and PNG files."""
    base = st.sampled_from([JPEG, PNG, CASES["png_palette"][0], CASES["jpeg_progressive"][0], CASES["png_rgba"][0]])

    def flip(data: bytes, positions: list[int], values: list[int]) -> bytes:
        out = bytearray(data)
        for p, v in zip(positions, values):
            out[p % len(out)] = v
        return bytes(out)

    flips = st.tuples(base, st.lists(st.integers(0, 10**6), min_size=1, max_size=8),
                      st.lists(st.integers(0, 255), min_size=8, max_size=8)).map(lambda t: flip(*t))
    cuts = st.tuples(base, st.integers(0, 10**6)).map(lambda t: t[0][: t[1] % len(t[0])])
    splices = st.tuples(base, base, st.integers(0, 10**6)).map(lambda t: t[0][: t[2] % len(t[0])] + t[1][t[2] % len(t[1]):])
    inserts = st.tuples(base, st.integers(0, 10**6), st.binary(min_size=1, max_size=32)).map(
        lambda t: t[0][: t[1] % len(t[0])] + t[2] + t[0][t[1] % len(t[0]):])
    return st.one_of(flips, cuts, splices, inserts, st.binary(max_size=512))


def test_mutated_images_decode_or_are_refused_with_a_reason():
    def check(data: bytes) -> str:
        outcome, detail = decode_outcome(data)
        return "decoded" if outcome == OK else f"refused:{detail}"

    run_cases("image:decode:mutations", mutations(), check)


def _frame(data: bytes, line: str, content_type: str = "image/jpeg") -> FrameCaptured:
    msg = FrameCaptured(frame_id=f"f-{uuid.uuid4().hex[:12]}", line_id=line, camera_id="cam-1", gateway_id="gw-1",
                        content_type=content_type, inline_image=data)
    msg.captured_at.FromDatetime(datetime.now(UTC))
    return msg


async def upload(stub, frames: list[FrameCaptured]) -> ingest_pb2.UploadFramesResponse:
    return await stub.UploadFrames(iter([ingest_pb2.UploadFrameRequest(frame=f) for f in frames]), timeout=120)


async def test_every_named_image_through_ingest_is_ingested_correctly_or_refused(stack, tmp_path):
    line = f"line-{uuid.uuid4().hex[:6]}"
    inline_limit = 1024 * 1024
    names = sorted(CASES)
    frames = [_frame(CASES[n][0], line, "image/png" if "png" in n else "image/jpeg") for n in names]
    async with hosted("ingest", stack, tmp_path) as host:
        stub = ingest_pb2_grpc.IngestServiceStub(host.channel)
        response = await upload(stub, frames)
        assert len(response.results) == len(names)
        for name, f, result in zip(names, frames, response.results):
            data, (outcome, detail) = CASES[name]
            assert result.frame_id == f.frame_id
            if outcome == OK:
                assert result.accepted, (name, R.Name(result.reason), result.detail)
                stored = (await stub.GetFrame(ingest_pb2.GetFrameRequest(frame_id=f.frame_id))).frame
                assert (stored.width, stored.height) == detail, name
            elif not data:
                assert (result.accepted, result.reason) == (False, R.REJECT_REASON_MISSING_IMAGE), name
            elif len(data) > inline_limit:
                assert (result.accepted, result.reason) == (False, R.REJECT_REASON_IMAGE_TOO_LARGE), name
            else:
                assert (result.accepted, result.reason) == (False, FAILURE_REASON[detail]), (name, result.detail)
                assert result.detail, name

        # Mutated images through the whole pipeline: each accepted or refused with a reason and a detail.
        async def check(data: bytes) -> str:
            (result,) = (await upload(stub, [_frame(data, line)])).results
            if result.accepted:
                return "ingested"
            assert result.reason != R.REJECT_REASON_UNSPECIFIED and result.detail, result
            return f"refused:{R.Name(result.reason)}"

        await run_cases_async("image:ingest:mutations", mutations(), check)
