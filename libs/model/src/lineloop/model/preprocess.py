"""Image -> model input, the same for training, gate evaluation and export checks.

Stands in for `lineloop.vision.to_model_input` until that lands; it is the only
place in lineloop.model that turns pixels into tensors, so switching is one import.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def decode_rgb(data: bytes) -> Image.Image:
    """Decode image bytes (JPEG/PNG) to RGB; raises ValueError on undecodable data."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except Exception as err:  # PIL raises several unrelated types for bad data
        raise ValueError(f"undecodable image: {err}") from err


def to_model_input(image: Image.Image, size: int) -> np.ndarray:
    """RGB image -> float32 [3, size, size] in 0..1 (bilinear resize, no crop)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(image, dtype=np.float32) / 255.0
    return np.ascontiguousarray(arr.transpose(2, 0, 1))
