"""The compiler's own state: registered versions it may build, and one build row per target.

A build row is a job first (`pending` -> `running`, claimed by one worker replica) and a
result after (`done`, with the `ModelCompiled` it published). A claim that outlives the
claim timeout (a worker died) is taken again by another worker.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    Column,
    DateTime,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    and_,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from lineloop.storage.sql import utcnow
from lineloop.v1.events_pb2 import BUILD_STATUS_OK, ModelCompiled, ModelRegistered

SCHEMA_COMPONENT = "lineloop.compiler"
SCHEMA_VERSION = 1

PENDING, RUNNING, DONE = "pending", "running", "done"

metadata = MetaData()

models = Table(
    "compiler_models",
    metadata,
    Column("model_name", String(255), primary_key=True),
    Column("version", String(64), primary_key=True),
    Column("event", LargeBinary, nullable=False),  # the ModelRegistered it came from
    Column("registered_at", DateTime(timezone=True), nullable=False),
)

builds = Table(
    "compiler_builds",
    metadata,
    Column("build_id", String(64), primary_key=True),
    Column("model_name", String(255), nullable=False),
    Column("version", String(64), nullable=False),
    Column("target", String(128), nullable=False),
    Column("state", String(16), nullable=False),
    Column("claimed_by", String(128)),
    Column("claimed_at", DateTime(timezone=True)),
    Column("result", LargeBinary),  # ModelCompiled, once done
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("model_name", "version", "target", name="uq_compiler_builds_target"),
)


def save_model(session: Session, event: ModelRegistered) -> None:
    if get_model(session, event.model_name, event.version) is None:
        session.execute(models.insert().values(
            model_name=event.model_name, version=event.version, event=event.SerializeToString(), registered_at=utcnow(),
        ))


def get_model(session: Session, model_name: str, version: str) -> ModelRegistered | None:
    raw = session.execute(
        select(models.c.event).where(models.c.model_name == model_name, models.c.version == version)
    ).scalar_one_or_none()
    return None if raw is None else ModelRegistered.FromString(raw)


def ensure_build(session: Session, model_name: str, version: str, target: str, *, retry_failed: bool = False) -> str:
    """The build id for (model, version, target), queueing it if new (or if it ended without an OK build)."""
    row = session.execute(
        select(builds.c.build_id, builds.c.state, builds.c.result)
        .where(builds.c.model_name == model_name, builds.c.version == version, builds.c.target == target)
    ).first()
    now = utcnow()
    if row is None:
        build_id = f"b-{uuid.uuid4().hex[:16]}"
        session.execute(builds.insert().values(
            build_id=build_id, model_name=model_name, version=version, target=target, state=PENDING,
            created_at=now, updated_at=now,
        ))
        return build_id
    if retry_failed and row.state == DONE and ModelCompiled.FromString(row.result).status != BUILD_STATUS_OK:
        session.execute(
            update(builds).where(builds.c.build_id == row.build_id)
            .values(state=PENDING, claimed_by=None, claimed_at=None, updated_at=now)
        )
    return row.build_id


def claim_next(session: Session, worker_id: str, targets: set[str], stale_before: datetime) -> tuple[str, str, str, str] | None:
    """Claim the oldest pending (or abandoned) build of one of `targets`: (build_id, model, version, target)."""
    if not targets:
        return None
    candidates = session.execute(
        select(builds.c.build_id, builds.c.model_name, builds.c.version, builds.c.target, builds.c.state,
               builds.c.claimed_at)
        .where(builds.c.target.in_(sorted(targets)))
        .where(or_(builds.c.state == PENDING, and_(builds.c.state == RUNNING, builds.c.claimed_at < stale_before)))
        .order_by(builds.c.created_at)
        .limit(10)
    ).all()
    for row in candidates:
        # Compare-and-set on what we read: another replica may have claimed it meanwhile.
        claimed = session.execute(
            update(builds)
            .where(builds.c.build_id == row.build_id, builds.c.state == row.state,
                   (builds.c.claimed_at == row.claimed_at) if row.claimed_at is not None else builds.c.claimed_at.is_(None))
            .values(state=RUNNING, claimed_by=worker_id, claimed_at=utcnow(), updated_at=utcnow())
        )
        if claimed.rowcount == 1:
            return row.build_id, row.model_name, row.version, row.target
    return None


def finish(session: Session, build_id: str, result: ModelCompiled) -> None:
    session.execute(
        update(builds).where(builds.c.build_id == build_id)
        .values(state=DONE, result=result.SerializeToString(), updated_at=utcnow())
    )


def get_build(session: Session, build_id: str) -> tuple[str, ModelCompiled] | None:
    """(state, the build as far as it has come): a queued build has only its identity."""
    row = session.execute(select(builds).where(builds.c.build_id == build_id)).first()
    return None if row is None else (row.state, _as_proto(row))


def list_builds(session: Session, model_name: str = "", version: str = "") -> list[tuple[str, ModelCompiled]]:
    query = select(builds).order_by(builds.c.created_at)
    if model_name:
        query = query.where(builds.c.model_name == model_name)
    if version:
        query = query.where(builds.c.version == version)
    return [(row.state, _as_proto(row)) for row in session.execute(query).all()]


def _as_proto(row) -> ModelCompiled:
    if row.result is not None and row.state == DONE:
        return ModelCompiled.FromString(row.result)
    return ModelCompiled(model_name=row.model_name, version=row.version, target=row.target, build_id=row.build_id)
