"""`models.compiled.v1` -> the registry's record of each version's builds (one row per target).

The deployer reads it: Triton serves a version's `triton-onnx` build, each edge fleet gets
the build of its target profile. A rebuild of a target replaces the row (newest wins).
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Integer, LargeBinary, MetaData, String, Table, select, update
from sqlalchemy.orm import Session

from lineloop.bus import Bus, EventContext, Reject
from lineloop.storage.sql import utcnow
from lineloop.v1.events_pb2 import BUILD_STATUS_OK, ModelCompiled

SCHEMA_COMPONENT = "registry.builds"
SCHEMA_VERSION = 1

metadata = MetaData()

builds = Table(
    "registry_builds",
    metadata,
    Column("model_name", String(200), primary_key=True),
    Column("version", String(32), primary_key=True),
    Column("target", String(128), primary_key=True),
    Column("build_id", String(64), nullable=False),
    Column("status", Integer, nullable=False),
    Column("event", LargeBinary, nullable=False),  # the ModelCompiled, as received
    Column("recorded_at", DateTime(timezone=True), nullable=False),
)


def record(session: Session, msg: ModelCompiled) -> None:
    values = {"build_id": msg.build_id, "status": msg.status, "event": msg.SerializeToString(), "recorded_at": utcnow()}
    where = (builds.c.model_name == msg.model_name, builds.c.version == msg.version, builds.c.target == msg.target)
    current = session.execute(select(builds.c.event).where(*where)).scalar_one_or_none()
    if current is None:
        session.execute(builds.insert().values(model_name=msg.model_name, version=msg.version, target=msg.target, **values))
    elif ModelCompiled.FromString(current).built_at.ToDatetime() <= msg.built_at.ToDatetime():
        session.execute(update(builds).where(*where).values(**values))


def ok_build(session: Session, model_name: str, version: str, target: str) -> ModelCompiled | None:
    """The verified, signed build of one target, if there is one."""
    raw = session.execute(select(builds.c.event).where(
        builds.c.model_name == model_name, builds.c.version == version, builds.c.target == target,
        builds.c.status == BUILD_STATUS_OK,
    )).scalar_one_or_none()
    return None if raw is None else ModelCompiled.FromString(raw)


def builds_of(session: Session, model_name: str, version: str) -> list[ModelCompiled]:
    """Every target's latest build of a version (for `ModelVersion.builds`)."""
    rows = session.execute(select(builds.c.event).where(builds.c.model_name == model_name, builds.c.version == version)
                           .order_by(builds.c.target)).scalars()
    return [ModelCompiled.FromString(raw) for raw in rows]


async def on_model_compiled(msg: ModelCompiled, ctx: EventContext) -> None:
    missing = [name for name in ("model_name", "version", "target", "build_id") if not getattr(msg, name)]
    if missing:
        raise Reject("invalid_model_compiled", f"missing {', '.join(missing)}")
    if msg.status == BUILD_STATUS_OK and not (msg.manifest.key and msg.signature and msg.artifacts):
        raise Reject("invalid_model_compiled", f"OK build {msg.build_id} has no manifest, signature or artifacts")
    record(ctx.session, msg)


def subscribe(bus: Bus, group: str) -> None:
    bus.handler(ModelCompiled, group=group)(on_model_compiled)
