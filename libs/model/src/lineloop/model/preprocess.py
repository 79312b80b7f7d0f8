"""Stored frame bytes -> model input, with lineloop.vision's one transform."""

from __future__ import annotations

import numpy as np

from lineloop.vision import decode_image, to_model_input


def frame_input(data: bytes, size: int) -> np.ndarray:
    """Encoded frame (JPEG/PNG) -> float32 [3, size, size] in 0..1.

    Raises lineloop.vision.ImageRejected (a ValueError) for bytes that are no usable image.
    """
    return to_model_input(decode_image(data).image, size)
