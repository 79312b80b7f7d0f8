"""The compact inspection classifier: depthwise-separable convolutions (MobileNet-style).

`width` scales every layer's channels; the embedding is the pooled last stage
(8 x width features), used by the monitor for drift. Any input size that is a
multiple of 16 works; 96 x 96 is the default.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import torch
from torch import nn

DEFAULT_INPUT_SIZE = 96
DEFAULT_WIDTH = 16


@dataclass(frozen=True)
class ModelSpec:
    classes: tuple[str, ...]
    width: int = DEFAULT_WIDTH
    input_size: int = DEFAULT_INPUT_SIZE
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if len(self.classes) < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {list(self.classes)}")
        if self.width < 4:
            raise ValueError(f"width must be >= 4, got {self.width}")
        if self.input_size < 32 or self.input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16 and >= 32, got {self.input_size}")

    @property
    def embedding_dim(self) -> int:
        return 8 * self.width

    def as_dict(self) -> dict:
        d = asdict(self)
        d["classes"] = list(self.classes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        return cls(classes=tuple(d["classes"]), width=int(d["width"]), input_size=int(d["input_size"]),
                   dropout=float(d.get("dropout", 0.2)))


def _separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class InspectionNet(nn.Module):
    """forward(images [N,3,S,S] in 0..1) -> (logits [N,C], embedding [N,8*width])."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        w = spec.width
        self.stem = nn.Sequential(
            nn.Conv2d(3, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
        )
        self.features = nn.Sequential(
            _separable(w, 2 * w, 2),
            _separable(2 * w, 2 * w, 1),
            _separable(2 * w, 4 * w, 2),
            _separable(4 * w, 4 * w, 1),
            _separable(4 * w, 8 * w, 2),
            _separable(8 * w, 8 * w, 1),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(spec.dropout)
        self.head = nn.Linear(8 * w, len(spec.classes))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.features(self.stem(images))
        embedding = torch.flatten(self.pool(x), 1)
        return self.head(self.dropout(embedding)), embedding


def checkpoint(model: InspectionNet) -> dict:
    """What goes in weights.pt: the spec and the state dict, nothing pickled beyond tensors."""
    return {"format": "lineloop.inspection-net/1", "spec": model.spec.as_dict(), "state_dict": model.state_dict()}


def from_checkpoint(ckpt: dict) -> InspectionNet:
    if ckpt.get("format") != "lineloop.inspection-net/1":
        raise ValueError(f"not an inspection-net checkpoint (format {ckpt.get('format')!r})")
    model = InspectionNet(ModelSpec.from_dict(ckpt["spec"]))
    model.load_state_dict(ckpt["state_dict"])
    return model


def checkpoint_bytes(model: InspectionNet) -> bytes:
    """weights.pt as training stores it."""
    buf = io.BytesIO()
    torch.save(checkpoint(model), buf)
    return buf.getvalue()


def load_checkpoint(data: bytes) -> InspectionNet:
    """A stored weights.pt as a CPU model in eval mode; `weights_only` so loading runs no pickled code."""
    return from_checkpoint(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)).eval()
