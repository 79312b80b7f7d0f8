"""Training data: manifest frames from the local cache, decoded, resized and augmented.

Augmentation is drawn from a generator seeded by (seed, epoch, index), so a run is
reproducible whatever the number of DataLoader workers. The epoch travels inside the
index (`EpochSampler`): persistent worker processes hold their own copy of the
dataset, so an attribute set on it in the main process would never reach them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from lineloop.model.preprocess import frame_input


class FrameDataset(Dataset):
    """(image [3,S,S] float32 0..1, class index) for cached frame files."""

    def __init__(self, paths: list[Path], labels: list[int], size: int, *, augment: bool, seed: int) -> None:
        if len(paths) != len(labels):
            raise ValueError("paths and labels differ in length")
        self.paths = [str(p) for p in paths]
        self.labels = labels
        self.size = size
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int) -> tuple[torch.Tensor, int]:
        epoch, index = divmod(key, len(self.paths))
        with open(self.paths[index], "rb") as f:
            image = torch.from_numpy(frame_input(f.read(), self.size))
        if self.augment:
            g = torch.Generator().manual_seed(hash((self.seed, epoch, index)) & 0x7FFF_FFFF)
            image = augment(image, g)
        return image, self.labels[index]


class EpochSampler(Sampler[int]):
    """Wraps a sampler and adds `epoch * len(dataset)` to each index it yields."""

    def __init__(self, inner: Sampler[int], size: int) -> None:
        self.inner = inner
        self.size = size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def __iter__(self):
        offset = self.epoch * self.size
        return (offset + i for i in self.inner)

    def __len__(self) -> int:
        return len(self.inner)


def augment(image: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Flips, a small crop (85-100 % of the side) resized back, small colour/brightness jitter."""
    _, h, w = image.shape
    u = torch.rand(8, generator=g)
    if u[0] < 0.5:
        image = image.flip(2)
    if u[1] < 0.5:
        image = image.flip(1)
    scale = 0.85 + 0.15 * float(u[2])
    ch, cw = max(8, int(h * scale)), max(8, int(w * scale))
    top, left = int((h - ch) * float(u[3])), int((w - cw) * float(u[4]))
    if (ch, cw) != (h, w):
        crop = image[:, top:top + ch, left:left + cw].unsqueeze(0)
        image = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False).squeeze(0)
    brightness = (float(u[5]) - 0.5) * 0.16           # +-0.08
    contrast = 1.0 + (float(u[6]) - 0.5) * 0.2         # 0.9..1.1
    colour = 1.0 + (torch.rand(3, 1, 1, generator=g) - 0.5) * 0.1  # +-5 % per channel
    mean = image.mean()
    image = (image - mean) * contrast + mean + brightness
    return (image * colour).clamp_(0.0, 1.0)


def class_weights(labels: list[int], num_classes: int) -> torch.Tensor:
    """Square-root inverse-frequency weights: defects are rare on a real line, but full inverse
    weights (seen: 70 % `ok`) pushed subtle frames to defect classes, trading `ok` false rejects
    (product thrown away) for recall, and halved test accuracy on the demo's frames."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, np.sqrt(counts.sum() / np.maximum(counts, 1) / num_classes), 0.0)
    return torch.tensor(weights, dtype=torch.float32)
