"""Per-frame image statistics, computed once on the decoded image, at full resolution.

The statistics are exact full-resolution values computed in strips of rows, so their
memory is a strip's (about `STRIP_PIXELS`), not the frame's: the previous whole-frame
version allocated ~13 bytes a pixel (luma as int16, the Laplacian's temporaries, a float64
copy for its variance), half a gigabyte for a 40 MP frame on top of the frame itself.

They are not computed on a thumbnail: sharpness (the Laplacian's variance) and clipping
are properties of the sensor's pixels, which downscaling averages away. On a 40 MP
frame, halving each side moved sharpness from 631 to 162 and the clipped share from
0.14% to 0.04%, while the monitor compares them with references recorded at full
resolution and a dirty lens shows first in the finest detail. The means would survive a
thumbnail; they come from Pillow's histograms, one C pass without a copy, anyway.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

# Rows of a strip times its width: the unit of memory the statistics work in (a few MB).
STRIP_PIXELS = 1 << 19


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

    Channel means and clipping come from Pillow's RGB histogram (no copy); luma
    (ITU-R BT.601, rounded to 0..255, Pillow's "L") and its Laplacian are made a strip of
    rows at a time, each strip with one row of its neighbours so every interior pixel's
    Laplacian is counted once, and summed exactly in integers.
    """
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 RGB image, got {image.shape} {image.dtype}")
        image = Image.fromarray(image, "RGB")
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    width, height = rgb.size
    pixels = width * height
    histogram = np.asarray(rgb.histogram(), dtype=np.float64).reshape(3, 256)
    luma_histogram = np.zeros(256, dtype=np.int64)
    lap_sum = lap_squares = lap_count = 0
    rows = max(1, STRIP_PIXELS // max(1, width))
    for top in range(0, height, rows):
        bottom = min(top + rows, height)
        first, last = max(top - 1, 0), min(bottom + 1, height)  # the strip with a row of context each side
        luma = np.asarray(rgb.crop((0, first, width, last)).convert("L"))
        luma_histogram += np.bincount(luma[top - first:bottom - first].ravel(), minlength=256)
        # Laplacian centres: the strip's own rows that have a row above and below in the image.
        lo, hi = max(top, 1), min(bottom, height - 1)
        if hi > lo and width >= 3:
            luma = luma.astype(np.int32)
            c = slice(lo - first, hi - first)
            up, down = slice(lo - first - 1, hi - first - 1), slice(lo - first + 1, hi - first + 1)
            laplacian = luma[up, 1:-1] + luma[down, 1:-1] + luma[c, :-2] + luma[c, 2:] - 4 * luma[c, 1:-1]
            lap_sum += int(laplacian.sum(dtype=np.int64))
            lap_squares += int(np.square(laplacian).sum(dtype=np.int64))
            lap_count += laplacian.size
    if lap_count and height >= 3:
        # Exact integer sums: E[x^2] - E[x]^2 loses nothing that matters at these magnitudes.
        sharpness = max(0.0, lap_squares / lap_count - (lap_sum / lap_count) ** 2)
    else:
        sharpness = 0.0
    levels = np.arange(256, dtype=np.float64)
    brightness = float((luma_histogram * levels).sum() / pixels)
    std = float(np.sqrt(max(0.0, (luma_histogram * levels**2).sum() / pixels - brightness**2)))
    means = (histogram * levels).sum(axis=1) / pixels
    return Quality(
        brightness_mean=brightness,
        brightness_std=std,
        contrast=std / 255.0,
        sharpness=float(sharpness),
        mean_r=float(means[0]),
        mean_g=float(means[1]),
        mean_b=float(means[2]),
        saturation_share=float((histogram[:, 0] + histogram[:, 255]).sum() / (3 * pixels)),
    )
