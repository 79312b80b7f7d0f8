"""Decoding untrusted image bytes with limits checked from the header first.

Pillow reads only the header on `Image.open`; dimensions and format are checked
there, so a decompression bomb (a tiny PNG that claims 20000x20000) is refused
before a single pixel is allocated.
"""

from __future__ import annotations

import dataclasses
import enum
import io

from PIL import Image

# Formats a gateway may send, by Pillow's format name: (content type, file extension).
SUPPORTED_FORMATS = {"JPEG": ("image/jpeg", "jpg"), "PNG": ("image/png", "png")}
SUPPORTED_CONTENT_TYPES = {ct for ct, _ in SUPPORTED_FORMATS.values()}


class Failure(enum.StrEnum):
    """Why bytes are not an acceptable image."""

    UNDECODABLE = "undecodable"
    UNSUPPORTED_FORMAT = "unsupported_format"
    TOO_LARGE = "too_large"


class ImageRejected(ValueError):
    def __init__(self, failure: Failure, detail: str) -> None:
        super().__init__(f"{failure}: {detail}")
        self.failure = failure
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class DecodeLimits:
    max_bytes: int = 16 * 1024 * 1024
    max_side: int = 8192
    max_pixels: int = 40_000_000


@dataclasses.dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, fully loaded
    format: str  # Pillow's name: JPEG, PNG
    content_type: str
    extension: str
    width: int
    height: int


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """An image whose header passed the limits; no pixel decoded yet."""

    image: Image.Image  # lazily opened: `load_image` decodes it
    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def decode_image(data: bytes, limits: DecodeLimits = DecodeLimits()) -> DecodedImage:
    """Decode `data` into an RGB image, or raise `ImageRejected` saying why not."""
    return load_image(open_image(data, limits))


def open_image(data: bytes, limits: DecodeLimits = DecodeLimits()) -> ImageHeader:
    """Read and check the header only: format, dimensions. Cheap, whatever the image's size."""
    if len(data) > limits.max_bytes:
        raise ImageRejected(Failure.TOO_LARGE, f"{len(data)} bytes, the limit is {limits.max_bytes}")
    if not data:
        raise ImageRejected(Failure.UNDECODABLE, "no image bytes")
    try:
        # Reads the header only. Pillow itself refuses (DecompressionBombError) twice its
        # own Image.MAX_IMAGE_PIXELS; our lower limits are checked below, before any pixel
        # is decoded, so a bomb is refused either way without allocating its pixels.
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageRejected(Failure.TOO_LARGE, f"decompression bomb: {exc}") from exc
    except Exception as exc:  # Pillow raises UnidentifiedImageError, SyntaxError, struct.error...
        raise ImageRejected(Failure.UNDECODABLE, f"not a readable image: {exc}") from exc
    if image.format not in SUPPORTED_FORMATS:
        raise ImageRejected(
            Failure.UNSUPPORTED_FORMAT, f"{image.format} image; supported: {', '.join(SUPPORTED_FORMATS)}"
        )
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageRejected(Failure.UNDECODABLE, f"image header says {width}x{height}")
    if max(width, height) > limits.max_side or width * height > limits.max_pixels:
        raise ImageRejected(
            Failure.TOO_LARGE,
            f"{width}x{height} ({width * height} pixels); limits {limits.max_side} per side, {limits.max_pixels} pixels",
        )
    return ImageHeader(image, image.format, width, height)


def load_image(header: ImageHeader) -> DecodedImage:
    """Decode the pixels of an image `open_image` accepted, as RGB."""
    image = header.image
    try:
        image.load()
        rgb = image
        if image.mode != "RGB":
            rgb = image.convert("RGB")
            image.close()  # frees the source pixels now, not whenever the header is dropped
    except Exception as exc:  # truncated data: OSError("image file is truncated"), zlib errors...
        raise ImageRejected(Failure.UNDECODABLE, f"{header.format} data does not decode: {exc}") from exc
    content_type, extension = SUPPORTED_FORMATS[header.format]
    return DecodedImage(rgb, header.format, content_type, extension, header.width, header.height)
