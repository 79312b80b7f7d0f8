"""What a run is asked to do and what it reports each epoch, without torch.

The service imports these at start (API, handlers, worker); torch and the trainer are
imported only when a run trains (worker.RunWorker._run), so training answers health in
seconds and a service that never trains never pays for torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class Cancelled(Exception):
    """The run was asked to stop."""


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 40
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    width: int = 16
    input_size: int = 96
    patience: int = 8  # epochs without a better val loss, counted in the schedule's second half
    seed: int = 1234
    label_smoothing: float = 0.05
    warm_lr_scale: float = 0.3  # fine-tuning from production weights takes smaller steps

    @classmethod
    def from_strings(cls, params: dict[str, str], base: TrainParams | None = None) -> TrainParams:
        """Parse request params (strings, as in the proto map); unknown names are an error."""
        base = base or cls()
        fields = {f: type(getattr(base, f)) for f in base.__dataclass_fields__}
        unknown = sorted(set(params) - set(fields))
        if unknown:
            raise ValueError(f"unknown training params {unknown}; known: {sorted(fields)}")
        values = {}
        for name, raw in params.items():
            try:
                values[name] = fields[name](raw)
            except ValueError:
                raise ValueError(f"param {name}={raw!r} is not a {fields[name].__name__}") from None
        merged = TrainParams(**{**base.__dict__, **values})
        for name in ("epochs", "batch_size", "width", "input_size", "patience"):
            if getattr(merged, name) <= 0:
                raise ValueError(f"param {name} must be positive")
        if not (0 < merged.lr < 10):
            raise ValueError("param lr must be in (0, 10)")
        return merged

    def as_strings(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Split:
    paths: list[Path]
    labels: list[int]


@dataclass
class TrainJob:
    classes: list[str]
    train: Split
    val: Split
    test: Split
    params: TrainParams
    init_checkpoint: dict | None = None  # warm start (same classes)
    num_workers: int = 0
    threads: int = 0  # 0: every core
    device: str = ""  # "": cuda when available, else cpu


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    frames_per_s: float
    data_share: float
    seconds: float
