"""Training service settings: environment `LINELOOP_TRAINING_*`."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from lineloop.contracts.catalogue import service
from lineloop.runtime import ServiceSettings, service_config
from lineloop.runtime.cpu import available_cpus


class TrainingSettings(ServiceSettings):
    service_name: ClassVar[str] = "training"
    model_config = service_config("training")

    # The model a dataset trains: `{dataset}` is replaced by the dataset name.
    model_name_pattern: str = "{dataset}"
    # Defaults for every run; a request's params override them (see trainer.TrainParams).
    default_params: dict[str, str] = {}
    # DataLoader worker processes; -1: chosen from the cores and the device (see `workers`).
    loader_workers: int = -1
    # torch intra-op threads; 0: every core.
    torch_threads: int = 0
    # Training processes per run (torchrun, DistributedDataParallel); 0: one per GPU when
    # there are several, else 1 (in this process, in a thread).
    processes: int = 0
    # Frames are kept here under their sha256 (shared by every run of this replica).
    cache_dir: Path | None = None
    # Where the production model is looked up for warm starts; empty: always from scratch.
    registry_grpc: str = f"127.0.0.1:{service('registry').grpc_port}"
    # How often the worker looks for queued runs and cancel requests (and beats its run's heartbeat).
    poll_interval_s: float = 1.0
    # A RUNNING run whose worker has not beaten its heartbeat for this long is queued again.
    run_stale_after_s: float = 120.0

    @property
    def frame_cache_dir(self) -> Path:
        return self.cache_dir or (self.stack.state_dir / "training" / "frame-cache")

    def workers(self) -> int:
        """On a GPU the cores only feed it: all but one load data. On CPU the cores also
        train: measured on 2 cores, loading inline beat one worker process (501 vs 440
        frames/s, bench_training.py), so workers start at 4 cores, a quarter of them."""
        if self.loader_workers >= 0:
            return self.loader_workers
        cores = available_cpus()  # the container's CPU quota, not the node's cores
        import torch  # only here: settings are read by code that never trains

        if torch.cuda.is_available():
            return min(8, max(1, cores - 1))
        return cores // 4

    def process_count(self) -> int:
        if self.processes > 0:
            return self.processes
        import torch  # only here: settings are read by code that never trains

        return max(1, torch.cuda.device_count())

    def model_for(self, dataset: str) -> str:
        return self.model_name_pattern.format(dataset=dataset)
