"""Per-frame image statistics, computed once on the decoded image."""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageStat

@dataclasses.dataclass(frozen=True)
class Quality:
    brightness_mean: float  # 0..255 luma
    brightness_std: float
    contrast: float  # RMS contrast of luma scaled to 0..1
    sharpness: float  # variance of the 4-neighbour Laplacian of luma
    mean_r: float
    mean_g: float
    mean_b: float
    saturation_share: float  # share of channel values clipped at 0 or 255

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def quality_stats(image: Image.Image | np.ndarray) -> Quality:
    """Statistics of an RGB image (PIL image or HxWx3 uint8 array).

    Means, deviations and clipping come from Pillow's histograms (one C pass);
    only the Laplacian needs the pixels.
    """
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 RGB image, got {image.shape} {image.dtype}")
        image = Image.fromarray(image, "RGB")
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    luma_image = rgb.convert("L")  # ITU-R BT.601, rounded to 0..255
    luma_stat = ImageStat.Stat(luma_image)
    histogram = np.asarray(rgb.histogram(), dtype=np.float64).reshape(3, 256)
    pixels = rgb.width * rgb.height
    luma = np.asarray(luma_image, dtype=np.int16)
    if min(luma.shape) >= 3:
        laplacian = (
            luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4 * luma[1:-1, 1:-1]
        )
        sharpness = float(laplacian.var(dtype=np.float64))
    else:
        sharpness = 0.0
    means = (histogram * np.arange(256)).sum(axis=1) / pixels
    std = float(luma_stat.stddev[0])
    return Quality(
        brightness_mean=float(luma_stat.mean[0]),
        brightness_std=std,
        contrast=std / 255.0,
        sharpness=sharpness,
        mean_r=float(means[0]),
        mean_g=float(means[1]),
        mean_b=float(means[2]),
        saturation_share=float((histogram[:, 0] + histogram[:, 255]).sum() / (3 * pixels)),
    )
