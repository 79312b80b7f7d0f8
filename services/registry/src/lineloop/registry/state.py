"""Registry state: models (version counter, revision, promotion lease), versions, transitions.

Concurrency: a stage change claims the model row's `pending_change` lease with a
conditional UPDATE (rowcount decides, so it holds across replicas and on
PostgreSQL without in-process locks), deploys, then applies every stage update,
the history rows and the outbox event in one transaction that first checks it
still holds the lease. A crash mid-deploy leaves the lease to expire; the stages
were never half-changed.

Holds (`canary_holds`, named for its first use): a canary held for want of live evidence,
or a candidate the gate found not enough evidence for; one row per held version, keyed by (model, version), so
replicas that hold the same canary at once write one row; an insert that loses the race
becomes an update, and only the replica whose statement changed the cause counts it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lineloop.registry import handlers_models_compiled
from lineloop.storage.sql import utcnow
from lineloop.v1.common_pb2 import EvalMetrics, ObjectRef, Stage
from lineloop.v1.events_pb2 import GateDecision, ModelTrained
from lineloop.v1.registry_pb2 import ModelVersion, StageTransition

SCHEMA_VERSION = 2  # 2: registry_canary_holds
metadata = MetaData()

models = Table(
    "registry_models", metadata,
    Column("model_name", String(200), primary_key=True),
    Column("next_version", Integer, nullable=False),
    Column("revision", Integer, nullable=False),
    Column("pending_change", String(64), nullable=True),
    Column("pending_since", DateTime(timezone=True), nullable=True),
)

versions = Table(
    "registry_versions", metadata,
    Column("model_name", String(200), primary_key=True),
    Column("version", String(32), primary_key=True),
    Column("number", Integer, nullable=False),
    Column("run_id", String(64), nullable=False),
    Column("dataset", String(200), nullable=False),
    Column("dataset_version", String(100), nullable=False),
    Column("dataset_sha256", String(64), nullable=False),
    Column("parent_version", String(32), nullable=False),
    Column("code_version", String(64), nullable=False),
    Column("stage", String(16), nullable=False),
    Column("gate_state", String(16), nullable=False),  # pending, decided, error
    Column("gate", LargeBinary, nullable=True),  # GateDecision
    Column("gate_error", Text, nullable=False, default=""),
    Column("auto_policy_done", Integer, nullable=False, default=0),
    Column("canary_share", Float, nullable=False, default=0.0),
    Column("frames_served", BigInteger, nullable=False, default=0),
    Column("classes", JSON, nullable=False),
    Column("input_size", Integer, nullable=False),
    Column("onnx", LargeBinary, nullable=False),  # ObjectRef
    Column("trained", LargeBinary, nullable=False),  # the ModelTrained event, as received
    Column("registered_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("model_name", "run_id", name="uq_registry_version_run"),
)

transitions = Table(
    "registry_transitions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model_name", String(200), nullable=False, index=True),
    Column("version", String(32), nullable=False),
    Column("from_stage", String(16), nullable=False),
    Column("to_stage", String(16), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("reason", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("metrics", LargeBinary, nullable=True),  # EvalMetrics at that moment
)

canary_holds = Table(
    "registry_canary_holds", metadata,
    Column("model_name", String(200), primary_key=True),
    Column("version", String(32), primary_key=True),
    # a canary's: monitor_unreachable, monitor_error, too_few_labels; a candidate's: not_enough_evidence (the gate)
    Column("cause", String(32), nullable=False),
    Column("reason", Text, nullable=False),
    Column("since", DateTime(timezone=True), nullable=False),
)

STAGE_NAMES = {Stage.STAGE_CANDIDATE: "candidate", Stage.STAGE_STAGING: "staging", Stage.STAGE_PRODUCTION: "production",
               Stage.STAGE_ARCHIVED: "archived", Stage.STAGE_REJECTED: "rejected", Stage.STAGE_UNSPECIFIED: ""}
STAGE_OF = {v: k for k, v in STAGE_NAMES.items()}


def stage_name(stage: int) -> str:
    return STAGE_NAMES[stage]


def ensure_model(s: Session, model_name: str) -> None:
    if not s.execute(select(models.c.model_name).where(models.c.model_name == model_name)).first():
        s.execute(insert(models).values(model_name=model_name, next_version=1, revision=0))


def allocate_version(s: Session, model_name: str) -> tuple[str, int]:
    """The next version number, taken with a conditional UPDATE so two replicas never share one."""
    ensure_model(s, model_name)
    while True:
        n = s.execute(select(models.c.next_version).where(models.c.model_name == model_name)).scalar_one()
        if s.execute(update(models).where(models.c.model_name == model_name, models.c.next_version == n)
                     .values(next_version=n + 1)).rowcount:
            return str(n), n


def version_by_run(s: Session, model_name: str, run_id: str) -> dict | None:
    row = s.execute(select(versions).where(versions.c.model_name == model_name, versions.c.run_id == run_id)).mappings().first()
    return dict(row) if row else None


def newest_dataset(s: Session, model_name: str, dataset: str) -> dict:
    """(dataset_version, manifest) of the newest version of `dataset` any version of the model
    was trained on: the test split every gate of the model is judged on. `manifest` is the
    ObjectRef the training event carried (empty for an event from before events carried it).
    Dataset versions are zero-padded (v0001, v0002), so they sort as strings."""
    row = s.execute(select(versions.c.dataset_version, versions.c.trained).where(
        versions.c.model_name == model_name, versions.c.dataset == dataset,
    ).order_by(versions.c.dataset_version.desc(), versions.c.number.desc()).limit(1)).mappings().first()
    return {"dataset_version": row["dataset_version"], "manifest": trained_of(row).dataset_manifest}


def get_version_row(s: Session, model_name: str, version_or_alias: str) -> dict | None:
    q = select(versions).where(versions.c.model_name == model_name)
    alias = version_or_alias.lower()
    if alias == "production":
        q = q.where(versions.c.stage == "production")
    elif alias in ("staging", "canary"):
        q = q.where(versions.c.stage == "staging")
    elif alias == "latest":
        q = q.order_by(versions.c.number.desc()).limit(1)
    else:
        q = q.where(versions.c.version == version_or_alias)
    row = s.execute(q).mappings().first()
    return dict(row) if row else None


def serving_versions(s: Session) -> dict[str, set[str]]:
    """Model -> the versions Triton must serve now: production and canary (staging)."""
    rows = s.execute(select(versions.c.model_name, versions.c.version)
                     .where(versions.c.stage.in_(("production", "staging")))).all()
    serving: dict[str, set[str]] = {}
    for model_name, version in rows:
        serving.setdefault(model_name, set()).add(version)
    return serving


def list_version_rows(s: Session, model_name: str = "", stage: str = "") -> list[dict]:
    q = select(versions).order_by(versions.c.model_name, versions.c.number.desc())
    if model_name:
        q = q.where(versions.c.model_name == model_name)
    if stage:
        q = q.where(versions.c.stage == stage)
    return [dict(r) for r in s.execute(q).mappings()]


def history(s: Session, model_name: str, version: str) -> list[dict]:
    return [dict(r) for r in s.execute(
        select(transitions).where(transitions.c.model_name == model_name, transitions.c.version == version)
        .order_by(transitions.c.id)).mappings()]


def add_transition(s: Session, model_name: str, version: str, from_stage: str, to_stage: str, actor: str, reason: str,
                   metrics: EvalMetrics | None) -> None:
    s.execute(insert(transitions).values(
        model_name=model_name, version=version, from_stage=from_stage, to_stage=to_stage, actor=actor, reason=reason,
        at=utcnow(), metrics=metrics.SerializeToString() if metrics is not None else None))


def set_stage(s: Session, model_name: str, version: str, stage: str, **values) -> None:
    s.execute(update(versions).where(versions.c.model_name == model_name, versions.c.version == version)
              .values(stage=stage, **values))


def hold(s: Session, model_name: str, version: str, cause: str, reason: str) -> bool:
    """Record that the policy holds this canary, and why; True when the hold is new or its cause changed."""
    key = (canary_holds.c.model_name == model_name, canary_holds.c.version == version)
    if s.execute(select(canary_holds.c.cause).where(*key)).first() is None:
        try:
            with s.begin_nested():
                s.execute(insert(canary_holds).values(model_name=model_name, version=version, cause=cause, reason=reason,
                                                      since=utcnow()))
            return True
        except IntegrityError:
            pass  # another replica recorded it first: fall through to the update
    changed = s.execute(update(canary_holds).where(*key, canary_holds.c.cause != cause)
                        .values(cause=cause, reason=reason, since=utcnow())).rowcount
    if not changed:
        s.execute(update(canary_holds).where(*key, canary_holds.c.reason != reason).values(reason=reason))
    return bool(changed)


def release_hold(s: Session, model_name: str, version: str) -> str:
    """End a version's hold (its stage is changing); the reason it was held, or "" if it was not."""
    key = (canary_holds.c.model_name == model_name, canary_holds.c.version == version)
    reason = s.execute(select(canary_holds.c.reason).where(*key)).scalar()
    if reason is not None:
        s.execute(delete(canary_holds).where(*key))
    return reason or ""


def get_hold(s: Session, model_name: str, version: str) -> dict | None:
    row = s.execute(select(canary_holds).where(canary_holds.c.model_name == model_name,
                                               canary_holds.c.version == version)).mappings().first()
    return dict(row) if row else None


def _ts(value: datetime) -> Timestamp:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def aliases(row: dict, latest_number: int) -> list[str]:
    names = {"production": ["production"], "staging": ["staging", "canary"]}.get(row["stage"], [])
    return names + (["latest"] if row["number"] == latest_number else [])


def version_proto(s: Session, row: dict) -> ModelVersion:
    latest = s.execute(select(versions.c.number).where(versions.c.model_name == row["model_name"])
                       .order_by(versions.c.number.desc()).limit(1)).scalar() or 0
    msg = ModelVersion(
        model_name=row["model_name"], version=row["version"], stage=STAGE_OF[row["stage"]], aliases=aliases(row, latest),
        run_id=row["run_id"], dataset=row["dataset"], dataset_version=row["dataset_version"],
        parent_version=row["parent_version"], canary_share=row["canary_share"], frames_served=row["frames_served"],
        onnx=onnx_ref(row), weights=trained_of(row).weights,
        registered_at=_ts(row["registered_at"]),
    )
    if row["gate"]:
        msg.gate.CopyFrom(GateDecision.FromString(row["gate"]))
    for t in history(s, row["model_name"], row["version"]):
        msg.history.append(StageTransition(
            from_stage=STAGE_OF[t["from_stage"]], to_stage=STAGE_OF[t["to_stage"]], actor=t["actor"], reason=t["reason"],
            at=_ts(t["at"]), metrics=EvalMetrics.FromString(t["metrics"]) if t["metrics"] else None))
    msg.builds.extend(handlers_models_compiled.builds_of(s, row["model_name"], row["version"]))
    held = get_hold(s, row["model_name"], row["version"])
    # A hold recorded while a person changed the stage may outlive it: only a canary (live
    # evidence) or a candidate (the gate's) is held.
    if held is not None and row["stage"] in ("staging", "candidate"):
        msg.hold_reason = held["reason"]
        msg.held_since.CopyFrom(_ts(held["since"]))
    return msg


def onnx_ref(row: dict) -> ObjectRef:
    return ObjectRef.FromString(row["onnx"])


def trained_of(row) -> ModelTrained:
    """The ModelTrained event a version was registered from: the locations training announced."""
    return ModelTrained.FromString(row["trained"])
