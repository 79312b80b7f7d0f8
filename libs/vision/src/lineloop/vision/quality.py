"""Per-frame image statistics, computed once on the decoded image."""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

# ITU-R BT.601 luma, the weighting Pillow's "L" conversion uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class Quality:
    brightness_mean: float  # 0..255 luma
    brightness_std: float
    contrast: float  # RMS contrast of luma scaled to 0..1
    sharpness: float  # variance of the 4-neighbour Laplacian of luma
    mean_r: float
    mean_g: float
    mean_b: float
    saturation_share: float  # share of pixels with a channel clipped at 0 or 255

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def quality_stats(image: Image.Image | np.ndarray) -> Quality:
    """Statistics of an RGB image (PIL image or HxWx3 uint8 array)."""
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {rgb.shape}")
    pixels = rgb.astype(np.float32)
    luma = pixels @ _LUMA
    channel_means = pixels.reshape(-1, 3).mean(axis=0)
    if min(luma.shape) >= 3:
        laplacian = (
            luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4.0 * luma[1:-1, 1:-1]
        )
        sharpness = float(laplacian.var())
    else:
        sharpness = 0.0
    clipped = ((rgb == 0) | (rgb == 255)).any(axis=2)
    return Quality(
        brightness_mean=float(luma.mean()),
        brightness_std=float(luma.std()),
        contrast=float((luma / 255.0).std()),
        sharpness=sharpness,
        mean_r=float(channel_means[0]),
        mean_g=float(channel_means[1]),
        mean_b=float(channel_means[2]),
        saturation_share=float(clipped.mean()),
    )
