"""Training state: known dataset versions, runs, and one active-run slot per model.

The slot row is what makes "one run per model at a time" hold across replicas:
a worker claims a run by setting the slot's `active_run_id` from NULL in the same
transaction that moves the run to RUNNING (a conditional UPDATE; the loser sees 0 rows).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)
from sqlalchemy.orm import Session

from lineloop.storage.sql import utcnow
from lineloop.v1.common_pb2 import EvalMetrics
from lineloop.v1.training_pb2 import EpochMetrics, Run, RunState

SCHEMA_VERSION = 1
metadata = MetaData()

datasets = Table(
    "training_datasets", metadata,
    Column("dataset", String(200), primary_key=True),
    Column("version", String(100), primary_key=True),
    Column("manifest_bucket", String(100), nullable=False),
    Column("manifest_key", String(500), nullable=False),
    Column("manifest_sha256", String(64), nullable=False),
    Column("classes", JSON, nullable=False),
    Column("line_id", String(200), nullable=False, default=""),
    Column("received_at", DateTime(timezone=True), nullable=False),
)

runs = Table(
    "training_runs", metadata,
    Column("run_id", String(64), primary_key=True),
    Column("model_name", String(200), nullable=False, index=True),
    Column("dataset", String(200), nullable=False),
    Column("dataset_version", String(100), nullable=False),
    Column("dataset_sha256", String(64), nullable=False, default=""),
    Column("state", String(16), nullable=False, index=True),
    Column("reason", Text, nullable=False, default=""),
    Column("requested_by", String(200), nullable=False, default=""),
    Column("params", JSON, nullable=False),
    Column("code_version", String(64), nullable=False, default=""),
    Column("host", String(200), nullable=False, default=""),
    Column("worker", String(200), nullable=False, default=""),
    Column("epochs", JSON, nullable=False),
    Column("test_metrics", LargeBinary, nullable=True),  # EvalMetrics, serialized
    Column("record", JSON, nullable=False),  # timings, classes, init, artifacts: what the model card says
    Column("artifact_prefix", String(500), nullable=False, default=""),
    Column("error", Text, nullable=False, default=""),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("heartbeat_at", DateTime(timezone=True), nullable=True),  # the worker is alive and on it
)

slots = Table(
    "training_model_slots", metadata,
    Column("model_name", String(200), primary_key=True),
    Column("active_run_id", String(64), nullable=True),
)

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
FINISHED = (SUCCEEDED, FAILED, CANCELLED)
_STATE_PROTO = {QUEUED: RunState.RUN_STATE_QUEUED, RUNNING: RunState.RUN_STATE_RUNNING,
                SUCCEEDED: RunState.RUN_STATE_SUCCEEDED, FAILED: RunState.RUN_STATE_FAILED,
                CANCELLED: RunState.RUN_STATE_CANCELLED}


def new_run_id() -> str:
    return f"run-{datetime.now(UTC):%Y%m%d%H%M%S}-{uuid.uuid4().hex[:8]}"


def record_dataset(s: Session, *, dataset: str, version: str, bucket: str, key: str, sha256: str,
                   classes: list[str], line_id: str) -> None:
    if s.execute(select(datasets.c.version).where(datasets.c.dataset == dataset, datasets.c.version == version)).first():
        return
    s.execute(insert(datasets).values(dataset=dataset, version=version, manifest_bucket=bucket, manifest_key=key,
                                      manifest_sha256=sha256, classes=classes, line_id=line_id, received_at=utcnow()))


def get_dataset(s: Session, dataset: str, version: str = "") -> dict | None:
    """A known dataset version; empty `version`: the newest received."""
    q = select(datasets).where(datasets.c.dataset == dataset)
    q = q.where(datasets.c.version == version) if version else q.order_by(datasets.c.received_at.desc(), datasets.c.version.desc())
    row = s.execute(q.limit(1)).mappings().first()
    return dict(row) if row else None


def enqueue(s: Session, *, model_name: str, dataset: str, version: str, sha256: str, params: dict[str, str],
            reason: str, requested_by: str) -> tuple[str, list[str]]:
    """Queue a run; a run still queued for the same model is superseded (latest wins).

    Returns (run_id, ids of the runs it superseded). A superseded run is kept,
    CANCELLED with the reason, so the history shows why it never ran.
    """
    run_id = new_run_id()
    superseded = [r for (r,) in s.execute(
        select(runs.c.run_id).where(runs.c.model_name == model_name, runs.c.state == QUEUED)
    )]
    if superseded:
        s.execute(update(runs).where(runs.c.run_id.in_(superseded), runs.c.state == QUEUED).values(
            state=CANCELLED, error=f"superseded by {run_id} ({dataset} {version})", finished_at=utcnow()))
    s.execute(insert(runs).values(
        run_id=run_id, model_name=model_name, dataset=dataset, dataset_version=version, dataset_sha256=sha256,
        state=QUEUED, reason=reason, requested_by=requested_by, params=params, epochs=[], record={},
        created_at=utcnow(),
    ))
    if not s.execute(select(slots.c.model_name).where(slots.c.model_name == model_name)).first():
        s.execute(insert(slots).values(model_name=model_name, active_run_id=None))
    return run_id, superseded


def claim_next(s: Session, worker: str, host: str) -> dict | None:
    """Move the oldest queued run of a model with a free slot to RUNNING, or None."""
    candidates = s.execute(
        select(runs.c.run_id, runs.c.model_name).join(slots, slots.c.model_name == runs.c.model_name)
        .where(runs.c.state == QUEUED, slots.c.active_run_id.is_(None)).order_by(runs.c.created_at)
    ).all()
    for run_id, model_name in candidates:
        took = s.execute(update(slots).where(slots.c.model_name == model_name, slots.c.active_run_id.is_(None))
                         .values(active_run_id=run_id)).rowcount
        if not took:
            continue
        moved = s.execute(update(runs).where(runs.c.run_id == run_id, runs.c.state == QUEUED)
                          .values(state=RUNNING, worker=worker, host=host, started_at=utcnow(),
                                  heartbeat_at=utcnow())).rowcount
        if moved:
            return get_run_row(s, run_id)
        s.execute(update(slots).where(slots.c.model_name == model_name).values(active_run_id=None))
    return None


def finish(s: Session, run_id: str, state: str, **values) -> None:
    row = s.execute(select(runs.c.model_name).where(runs.c.run_id == run_id)).first()
    s.execute(update(runs).where(runs.c.run_id == run_id).values(state=state, finished_at=utcnow(), **values))
    if row:
        s.execute(update(slots).where(slots.c.model_name == row.model_name, slots.c.active_run_id == run_id)
                  .values(active_run_id=None))


def heartbeat(s: Session, run_id: str) -> None:
    s.execute(update(runs).where(runs.c.run_id == run_id, runs.c.state == RUNNING).values(heartbeat_at=utcnow()))


def requeue_abandoned(s: Session, stale_before: datetime, slot: str = "") -> list[str]:
    """Runs left RUNNING whose worker has not beaten their heartbeat since `stale_before`: queued
    again, never lost. `slot`: only those of workers of this slot (`<host>:<cache dir>`, a
    worker id's prefix), so a restarted process takes back its predecessor's runs sooner; a
    live process of the same slot (two replicas sharing a host and cache) keeps beating, so its
    run is never taken."""
    q = select(runs.c.run_id).where(runs.c.state == RUNNING, runs.c.heartbeat_at < stale_before)
    if slot:
        q = q.where(runs.c.worker.startswith(f"{slot}:", autoescape=True))
    return _requeue(s, [r for (r,) in s.execute(q)])


def requeue_run(s: Session, run_id: str) -> None:
    """This process's run, left unfinished by a shutdown: queued again to run later."""
    _requeue(s, [r for (r,) in s.execute(select(runs.c.run_id).where(runs.c.run_id == run_id, runs.c.state == RUNNING))])


def _requeue(s: Session, ids: list[str]) -> list[str]:
    for run_id in ids:
        s.execute(update(runs).where(runs.c.run_id == run_id).values(
            state=QUEUED, epochs=[], started_at=None, heartbeat_at=None,
            error="requeued: the worker stopped during the run"))
        s.execute(update(slots).where(slots.c.active_run_id == run_id).values(active_run_id=None))
    return ids


def get_run_row(s: Session, run_id: str) -> dict | None:
    row = s.execute(select(runs).where(runs.c.run_id == run_id)).mappings().first()
    return dict(row) if row else None


def list_run_rows(s: Session, model_name: str = "", limit: int = 50) -> list[dict]:
    q = select(runs).order_by(runs.c.created_at.desc()).limit(limit)
    if model_name:
        q = q.where(runs.c.model_name == model_name)
    return [dict(r) for r in s.execute(q).mappings()]


def _ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite returns naive datetimes
        value = value.replace(tzinfo=UTC)
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def epoch_proto(e: dict) -> EpochMetrics:
    return EpochMetrics(epoch=e["epoch"], train_loss=e["train_loss"], val_loss=e["val_loss"],
                        val_accuracy=e["val_accuracy"], frames_per_s=e["frames_per_s"], data_share=e["data_share"])


def run_proto(row: dict) -> Run:
    run = Run(
        run_id=row["run_id"], model_name=row["model_name"], dataset=row["dataset"],
        dataset_version=row["dataset_version"], dataset_sha256=row["dataset_sha256"],
        state=_STATE_PROTO[row["state"]], code_version=row["code_version"], artifact_prefix=row["artifact_prefix"],
        error=row["error"], host=row["host"], reason=row["reason"],
        params={k: str(v) for k, v in (row["params"] or {}).items()},
        epochs=[epoch_proto(e) for e in row["epochs"] or []],
    )
    if row["test_metrics"]:
        run.test_metrics.CopyFrom(EvalMetrics.FromString(row["test_metrics"]))
    for name in ("created_at", "started_at", "finished_at"):
        ts = _ts(row[name])
        if ts is not None:
            getattr(run, name).CopyFrom(ts)
    return run
