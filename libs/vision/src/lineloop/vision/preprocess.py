"""The one image → model input transform, shared by training, compiler, ingest and edge.

Serving contract: input `images` FP32 [N, 3, S, S], RGB, values 0..1.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def to_model_input(image: Image.Image | np.ndarray, size: int) -> np.ndarray:
    """An RGB image (PIL image or HxWx3 uint8 array) as float32 [3, size, size] in 0..1.

    Resized with bilinear filtering, ignoring aspect ratio: cameras are fixed, so
    every frame of a line has the same framing and distortion.
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 array, got {image.shape} {image.dtype}")
        image = Image.fromarray(image, "RGB")
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(rgb, dtype=np.float32) * np.float32(1.0 / 255.0)
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def batch_model_input(images: list[Image.Image | np.ndarray], size: int) -> np.ndarray:
    """Several images as float32 [N, 3, size, size]."""
    return np.stack([to_model_input(image, size) for image in images]) if images else np.zeros(
        (0, 3, size, size), np.float32
    )
