"""One training job across several processes with torchrun (one per GPU; gloo on CPU).

The worker writes the job to a file and launches
`python -m torch.distributed.run --standalone --nproc-per-node=N -m lineloop.training.distributed JOB DIR`;
every rank runs the same `trainer.train` (DistributedDataParallel inside), rank 0
appends each epoch to DIR/epochs.jsonl (the worker tails it for progress) and
saves the result to DIR/result.pt. Cancelling terminates torchrun, which stops every rank.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from lineloop.training.job import Cancelled, EpochResult, TrainJob
from lineloop.training.trainer import TrainResult, train

TAIL_INTERVAL_S = 0.5


async def train_distributed(
    job: TrainJob, processes: int, *, on_epoch: Callable[[EpochResult], None], cancel: threading.Event,
) -> TrainResult:
    with tempfile.TemporaryDirectory(prefix="lineloop-ddp-") as tmp:
        work = Path(tmp)
        torch.save(job, work / "job.pt")
        log_path = work / "torchrun.log"
        with open(log_path, "wb") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                "-m", "lineloop.training.distributed", str(work / "job.pt"), str(work),
                stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
            seen = 0
            try:
                while True:
                    try:
                        await asyncio.wait_for(proc.wait(), TAIL_INTERVAL_S)
                    except TimeoutError:
                        pass
                    seen = _tail(work / "epochs.jsonl", seen, on_epoch)
                    if proc.returncode is not None:
                        break
                    if cancel.is_set():
                        proc.terminate()
                        await proc.wait()
                        raise Cancelled()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        if proc.returncode != 0:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"torchrun exited with {proc.returncode}: {tail}")
        return torch.load(work / "result.pt", weights_only=False)  # our own file, written by rank 0 just now


def _tail(path: Path, seen: int, on_epoch: Callable[[EpochResult], None]) -> int:
    if not path.exists():
        return seen
    lines = path.read_text().splitlines()
    for line in lines[seen:]:
        on_epoch(EpochResult(**json.loads(line)))
    return len(lines)


def main(job_path: str, work_dir: str) -> None:
    job: TrainJob = torch.load(job_path, weights_only=False)
    work = Path(work_dir)
    rank = int(os.environ.get("RANK", "0"))

    def record(e: EpochResult) -> None:
        with open(work / "epochs.jsonl", "a") as f:
            f.write(json.dumps(e.__dict__) + "\n")

    result = train(job, on_epoch=record)
    if rank == 0:
        torch.save(result, work / "result.pt")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
