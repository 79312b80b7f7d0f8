"""The run worker: takes queued runs one at a time and carries each to its end.

Handlers and the API only queue runs (state.enqueue); this task claims one,
fetches its manifest and frames, trains in a thread (the event loop stays free
for gRPC, health and Kafka heartbeats), stores the artifacts, and in one
transaction marks the run SUCCEEDED and writes `models.trained.v1` to the outbox.
A cancel request (CancelRun, possibly on another replica) is seen through the
database within `poll_interval_s` and stops the frame fetch within a frame, training
within a batch; a shutdown stops the run the same way and queues it again. A cancelled
or failed run publishes nothing, so the registry never sees it.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import platform
import socket
import subprocess
import threading
import time
from types import ModuleType
from typing import TYPE_CHECKING
from datetime import timedelta
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import metrics as otel_metrics
from sqlalchemy import select, update

from lineloop.contracts.catalogue import bucket
from lineloop.model.dataset import DatasetSplits
from lineloop.model.manifest import FrameCache, ManifestError, class_list
from lineloop.runtime import Service
from lineloop.storage.sql import utcnow
from lineloop.training import state
from lineloop.training.settings import TrainingSettings
from lineloop.training.job import Cancelled, EpochResult, Split, TrainJob, TrainParams
from lineloop.v1.common_pb2 import ObjectRef
from lineloop.v1.events_pb2 import ModelTrained
from lineloop.v1.registry_pb2 import GetVersionRequest
from lineloop.v1.registry_pb2_grpc import RegistryServiceStub
from lineloop.runtime.client import aio_channel as aio_grpc_channel

if TYPE_CHECKING:
    from lineloop.training.trainer import TrainResult

log = logging.getLogger(__name__)
MODELS_BUCKET = bucket("models")

_meter = otel_metrics.get_meter("lineloop.training")
runs_finished = _meter.create_counter("lineloop.training.runs", unit="{run}", description="Runs ended, by outcome")
epoch_frames_per_s = _meter.create_histogram("lineloop.training.epoch.throughput", unit="{frame}/s",
                                             description="Frames trained per second in one epoch")
run_seconds = _meter.create_histogram("lineloop.training.run.duration", unit="s", description="Run length, by outcome")


class RunFailed(Exception):
    """A run that cannot succeed; the message is what GetRun shows as `error`."""


def code_version() -> str:
    """The git sha of the code (images set LINELOOP_CODE_VERSION at build time)."""
    if env := os.environ.get("LINELOOP_CODE_VERSION"):
        return env
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{sha}-dirty" if dirty else sha
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def torch_modules() -> ModuleType:
    """torch and the trainer, imported when a run first needs them (seconds on a small box): the
    service starts and answers health without them. Call through asyncio.to_thread."""
    import torch  # noqa: F401

    from lineloop.training import distributed
    return distributed


def host_info() -> dict:
    import torch  # loaded by the run that asks (torch_modules)
    return {
        "hostname": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "",
    }


# Polls without a heartbeat after which a run of this worker's own slot counts as abandoned:
# its process died (a restart follows) while a live one beats every poll.
SLOT_SILENT_POLLS = 30


class RunWorker:
    def __init__(self, service: Service, settings: TrainingSettings) -> None:
        self.service = service
        self.settings = settings
        # The slot (machine and frame cache) a worker id starts with, then this process: two
        # processes on one slot (a restart, or replicas sharing a host and cache) are two workers.
        self.slot = f"{socket.gethostname()}:{settings.frame_cache_dir.resolve()}"
        self.worker_id = f"{self.slot}:{os.getpid()}"
        self.cache = FrameCache(settings.frame_cache_dir, service.objects)
        self.code_version = code_version()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._cancel: threading.Event | None = None

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="training-worker")

    def _requeue_abandoned(self, s) -> list[str]:
        """A run of this slot whose heartbeat stopped (the process before a restart) comes back
        after SLOT_SILENT_POLLS polls; any other replica's after run_stale_after_s."""
        now = utcnow()
        return (state.requeue_abandoned(s, now - timedelta(seconds=SLOT_SILENT_POLLS * self.settings.poll_interval_s), self.slot)
                + state.requeue_abandoned(s, now - timedelta(seconds=self.settings.run_stale_after_s)))

    async def stop(self) -> None:
        self._stopping = True
        if self._cancel is not None:
            self._cancel.set()
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                async with self.service.db.write() as s:
                    stale = self._requeue_abandoned(s)
                    if stale:
                        log.warning("requeued runs whose worker went silent: %s", stale)
                    row = state.claim_next(s, self.worker_id, socket.gethostname())
            except Exception:
                log.exception("claiming a run failed; retrying")
                row = None
            if row is None:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval_s)
                except TimeoutError:
                    pass
                continue
            await self._execute(row)

    async def _execute(self, row: dict) -> None:
        run_id = row["run_id"]
        cancel = threading.Event()
        self._cancel = cancel
        watcher = asyncio.create_task(self._watch_cancel(run_id, cancel))
        started = time.perf_counter()
        outcome = state.FAILED
        try:
            event = await self._run(row, cancel)
            async with self.service.db.write() as s:
                # A cancel that landed after training finished still wins: nothing is published.
                if s.execute(select(state.runs.c.cancel_requested).where(state.runs.c.run_id == run_id)).scalar():
                    raise Cancelled()
                state.finish(s, run_id, state.SUCCEEDED, test_metrics=event.test_metrics.SerializeToString())
                self.service.bus.add_to_outbox(s, event)
            self.service.bus.relay.wake()
            outcome = state.SUCCEEDED
        except Cancelled:
            outcome = state.CANCELLED
            async with self.service.db.write() as s:
                if self._stopping and not _cancel_requested(s, run_id):
                    state.requeue_run(s, run_id)  # shutdown, not a user cancel: run it again later
                else:  # CancelRun already recorded who asked and why in `error`
                    state.finish(s, run_id, state.CANCELLED)
        except Exception as exc:
            error = str(exc) if isinstance(exc, RunFailed | ManifestError | ValueError) else f"{type(exc).__name__}: {exc}"
            log.exception("run %s failed: %s", run_id, error)
            async with self.service.db.write() as s:
                state.finish(s, run_id, state.FAILED, error=error)
        finally:
            watcher.cancel()
            self._cancel = None
            runs_finished.add(1, {"outcome": outcome})
            run_seconds.record(time.perf_counter() - started, {"outcome": outcome})
        log.info("run %s %s", run_id, outcome)

    async def _watch_cancel(self, run_id: str, cancel: threading.Event) -> None:
        """Sees cancel requests (from any replica) and keeps the run's heartbeat fresh."""
        while not cancel.is_set():
            await asyncio.sleep(self.settings.poll_interval_s)
            async with self.service.db.write() as s:
                state.heartbeat(s, run_id)
                if _cancel_requested(s, run_id):
                    cancel.set()

    async def _run(self, row: dict, cancel: threading.Event) -> ModelTrained:
        run_id, model_name = row["run_id"], row["model_name"]
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        with self.service.db.session() as s:
            ds = state.get_dataset(s, row["dataset"], row["dataset_version"])
        if ds is None:
            raise RunFailed(f"dataset {row['dataset']} {row['dataset_version']} is not known to training")
        distributed = await asyncio.to_thread(torch_modules)
        dataset = await DatasetSplits.aread(self.service.objects, _manifest_ref(ds))  # model labels train only
        entries = dataset.entries
        classes = class_list(entries, ds["classes"])
        try:
            params = TrainParams.from_strings({**self.settings.default_params, **(row["params"] or {})})
        except ValueError as err:
            raise RunFailed(str(err)) from None

        init_ckpt, parent_version, init_note = await self._warm_start(model_name, classes)
        if init_ckpt is not None:  # the architecture comes with the weights
            spec = init_ckpt["spec"]
            params = TrainParams(**{**params.__dict__, "width": int(spec["width"]), "input_size": int(spec["input_size"])})
        timings["prepare_s"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        try:
            paths = await asyncio.to_thread(self.cache.fetch_all, entries, should_stop=cancel.is_set)
        except InterruptedError:
            if not cancel.is_set():
                raise
            raise Cancelled() from None  # a cancel or shutdown while fetching ends the run as one mid-training does
        timings["fetch_s"] = time.perf_counter() - t1
        index = {c: i for i, c in enumerate(classes)}
        path_of = {e.sha256: p for e, p in zip(entries, paths)}
        splits = {name: Split([path_of[e.sha256] for e in chosen], [index[e.label] for e in chosen])
                  for name, chosen in ((n, dataset.split(n)) for n in ("train", "val", "test"))}
        for name, split in splits.items():
            if not split.paths:
                raise RunFailed(f"dataset {row['dataset']} {row['dataset_version']} has no {name} frames")

        async with self.service.db.write() as s:
            s.execute(update(state.runs).where(state.runs.c.run_id == run_id).values(
                dataset_sha256=ds["manifest_sha256"], code_version=self.code_version, params=params.as_strings(),
                record={"classes": classes, "init": init_note, "parent_version": parent_version, "host": host_info(),
                        "frames": {k: len(v.paths) for k, v in splits.items()}}))

        job = TrainJob(classes=classes, train=splits["train"], val=splits["val"], test=splits["test"], params=params,
                       init_checkpoint=init_ckpt, num_workers=self.settings.workers(), threads=self.settings.torch_threads)
        t2 = time.perf_counter()
        processes = self.settings.process_count()
        if processes > 1:
            result: TrainResult = await distributed.train_distributed(
                job, processes, on_epoch=lambda e: self._record_epoch(run_id, e), cancel=cancel)
        else:
            result = await asyncio.to_thread(
                distributed.train, job, on_epoch=lambda e: self._record_epoch(run_id, e), should_stop=cancel.is_set)
        timings["train_s"] = time.perf_counter() - t2

        t3 = time.perf_counter()
        event = await self._store_artifacts(row, ds, classes, params, result, parent_version, init_note, timings)
        timings["store_s"] = time.perf_counter() - t3
        return event

    def _record_epoch(self, run_id: str, e: EpochResult) -> None:
        """Called from the training thread: a short synchronous write per epoch."""
        epoch_frames_per_s.record(e.frames_per_s)
        with self.service.db.transaction() as s:
            epochs = s.execute(select(state.runs.c.epochs).where(state.runs.c.run_id == run_id)).scalar() or []
            s.execute(update(state.runs).where(state.runs.c.run_id == run_id).values(epochs=[*epochs, e.__dict__]))

    async def _warm_start(self, model_name: str, classes: list[str]) -> tuple[dict | None, str, str]:
        """(checkpoint, parent version, note): production's weights when its classes are ours."""
        if not self.settings.registry_grpc:
            return None, "", "scratch: no registry configured"
        try:
            async with aio_grpc_channel(self.settings.registry_grpc) as channel:
                prod = await RegistryServiceStub(channel).GetVersion(
                    GetVersionRequest(model_name=model_name, version="production"), timeout=5)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return None, "", "scratch: no production version yet"
            log.warning("registry unreachable for warm start of %s: %s", model_name, err.details())
            return None, "", f"scratch: registry unavailable ({err.code().name})"
        # Where the registry says production's weights are (as this service announced them), not a rebuilt key.
        ref = prod.weights
        if not ref.bucket or not ref.key:
            return None, "", f"scratch: the registry names no weights for production version {prod.version}"
        try:
            data = await self.service.objects.aio.get_bytes(ref.bucket, ref.key, expected_sha256=ref.sha256 or None)
            import torch  # loaded by _run before the warm start (torch_modules)
            ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as err:
            return None, "", f"scratch: production weights {ref.bucket}/{ref.key} unreadable ({err})"
        if list(ckpt["spec"]["classes"]) != classes:
            return None, prod.version, f"scratch: classes changed ({ckpt['spec']['classes']} -> {classes})"
        return ckpt, prod.version, f"warm start from production version {prod.version} ({prod.run_id})"

    async def _store_artifacts(self, row: dict, ds: dict, classes: list[str], params: TrainParams,
                               result: TrainResult, parent_version: str, init_note: str,
                               timings: dict[str, float]) -> ModelTrained:
        run_id, model_name = row["run_id"], row["model_name"]
        prefix = f"{model_name}/{run_id}/"
        from lineloop.model.export import export_onnx
        from lineloop.model.net import checkpoint_bytes
        onnx_bytes = await asyncio.to_thread(export_onnx, result.model)
        objects = self.service.objects.aio
        weights = await objects.put_bytes(MODELS_BUCKET, prefix + "weights.pt", checkpoint_bytes(result.model),
                                        "application/octet-stream")
        onnx = await objects.put_bytes(MODELS_BUCKET, prefix + "model.onnx", onnx_bytes, "application/onnx")
        with self.service.db.session() as s:
            epochs = s.execute(select(state.runs.c.epochs).where(state.runs.c.run_id == run_id)).scalar() or []
        card = {
            "model_name": model_name, "run_id": run_id, "classes": classes, "spec": result.model.spec.as_dict(),
            "serving_contract": {"input": "images FP32 [N,3,S,S] RGB 0..1", "outputs": ["probabilities FP32 [N,C]", "embedding FP32 [N,E]"]},
            "dataset": {"name": row["dataset"], "version": row["dataset_version"], "manifest_sha256": ds["manifest_sha256"],
                        "manifest": f"{ds['manifest_bucket']}/{ds['manifest_key']}"},
            "code_version": self.code_version, "params": params.as_strings(), "init": init_note,
            "parent_version": parent_version, "epochs": epochs, "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early, "test_metrics": result.test.as_dict(), "val_metrics": result.val.as_dict(),
            "device": result.device, "world_size": result.world_size, "timings": {**timings, **result.timings},
            "host": host_info(), "reason": row["reason"], "requested_by": row["requested_by"],
            "artifacts": {"weights.pt": weights.sha256, "model.onnx": onnx.sha256},
        }
        card_obj = await objects.put_bytes(MODELS_BUCKET, prefix + "model_card.json",
                                           json.dumps(card, indent=2, default=str).encode(), "application/json")
        async with self.service.db.write() as s:
            s.execute(update(state.runs).where(state.runs.c.run_id == run_id).values(
                artifact_prefix=f"{MODELS_BUCKET}/{prefix}", record=card))
        finished = Timestamp()
        finished.GetCurrentTime()
        event = ModelTrained(
            model_name=model_name, run_id=run_id, dataset=row["dataset"], dataset_version=row["dataset_version"],
            dataset_sha256=ds["manifest_sha256"], code_version=self.code_version,
            artifact_prefix=f"{MODELS_BUCKET}/{prefix}", weights=_ref(weights), onnx=_ref(onnx), model_card=_ref(card_obj),
            dataset_manifest=_manifest_ref(ds),
            classes=classes, input_size=result.model.spec.input_size, test_metrics=result.test.to_proto(),
            params=params.as_strings(), parent_version=parent_version, finished_at=finished,
        )
        return event


def _ref(obj) -> ObjectRef:
    return ObjectRef(bucket=obj.bucket, key=obj.key, sha256=obj.sha256, size_bytes=obj.size_bytes)


def _manifest_ref(ds: dict) -> ObjectRef:
    """The manifest as DatasetVersioned announced it (training recorded the event's reference)."""
    return ObjectRef(bucket=ds["manifest_bucket"], key=ds["manifest_key"], sha256=ds["manifest_sha256"])


def _cancel_requested(s, run_id: str) -> bool:
    return bool(s.execute(select(state.runs.c.cancel_requested).where(state.runs.c.run_id == run_id)).scalar())
