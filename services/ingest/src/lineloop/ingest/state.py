"""Ingest's own state: the frame index, the image index (duplicates) and the serving picture."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import datetime

from sqlalchemy import (
    Column,
    DateTime,
    Float,
    Index,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    delete,
    select,
)
from sqlalchemy.orm import Session

from lineloop.storage.sql import utcnow
from lineloop.v1.common_pb2 import ObjectRef
from lineloop.v1.events_pb2 import FrameIngested, ModelPromoted

SCHEMA_COMPONENT = "lineloop.ingest"
SCHEMA_VERSION = 1

metadata = MetaData()

frames = Table(
    "ingest_frames",
    metadata,
    Column("frame_id", String(128), primary_key=True),
    Column("sha256", String(64), nullable=False),
    Column("bucket", String(63), nullable=False),
    Column("object_key", String(255), nullable=False),
    Column("line_id", String(128), nullable=False),
    Column("camera_id", String(128), nullable=False),
    Column("captured_at", DateTime(timezone=True), nullable=True),
    Column("ingested_at", DateTime(timezone=True), nullable=False),
    Column("duplicate_of", String(128), nullable=True),
    # The FrameIngested event as published, so GetFrame answers exactly what others saw.
    Column("event", LargeBinary, nullable=False),
    Index("ix_ingest_frames_sha256", "sha256"),
    Index("ix_ingest_frames_camera", "camera_id", "captured_at"),
)

# One row per distinct image content: the first frame that carried it.
images = Table(
    "ingest_images",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("first_frame_id", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# Which Triton model/versions serve each line (from models.promoted.v1).
deployments = Table(
    "ingest_deployments",
    metadata,
    Column("line_id", String(128), primary_key=True),
    Column("model_name", String(128), nullable=False),
    Column("triton_model", String(128), nullable=False),
    Column("production_version", String(64), nullable=False),
    Column("canary_version", String(64), nullable=False),
    Column("canary_share", Float, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

model_classes = Table(
    "ingest_model_classes",
    metadata,
    Column("model_name", String(128), primary_key=True),
    Column("version", String(64), primary_key=True),
    Column("classes", Text, nullable=False),  # JSON list, in output order
)


@dataclasses.dataclass(frozen=True)
class Deployment:
    line_id: str
    model_name: str
    triton_model: str
    production_version: str
    canary_version: str
    canary_share: float
    production_classes: tuple[str, ...]
    canary_classes: tuple[str, ...]


# ---- frames -----------------------------------------------------------------


# Built once: these run for every frame, and building a statement costs more than running it.
_FIND_FRAME = select(frames.c.event).where(frames.c.frame_id == bindparam("frame_id"))
_FIRST_WITH = select(images.c.first_frame_id).where(images.c.sha256 == bindparam("sha256"))
_ADD_IMAGE = images.insert()
_ADD_FRAME = frames.insert()


def find_frame(session: Session, frame_id: str) -> FrameIngested | None:
    event = session.execute(_FIND_FRAME, {"frame_id": frame_id}).scalar_one_or_none()
    return None if event is None else FrameIngested.FromString(event)


def first_frame_with(session: Session, sha256: str) -> str | None:
    return session.execute(_FIRST_WITH, {"sha256": sha256}).scalar_one_or_none()


def stored_image(session: Session, sha256: str) -> ObjectRef | None:
    """Where the index keeps the image with this sha256 (checked when it was stored), if it does."""
    first = first_frame_with(session, sha256)
    frame = find_frame(session, first) if first is not None else None
    return frame.image if frame is not None else None


def add_image(session: Session, sha256: str, frame_id: str) -> None:
    session.execute(_ADD_IMAGE, {"sha256": sha256, "first_frame_id": frame_id, "created_at": utcnow()})


def add_frame(session: Session, event: FrameIngested, captured_at: datetime | None) -> None:
    session.execute(
        _ADD_FRAME,
        dict(
            frame_id=event.frame_id,
            sha256=event.image.sha256,
            bucket=event.image.bucket,
            object_key=event.image.key,
            line_id=event.line_id,
            camera_id=event.camera_id,
            captured_at=captured_at,
            ingested_at=event.ingested_at.ToDatetime(tzinfo=utcnow().tzinfo),
            duplicate_of=event.duplicate_of or None,
            event=event.SerializeToString(),
        ),
    )


_CONTENT_KEY_SHA = re.compile(r"^[0-9a-f]{2}/([0-9a-f]{64})\.[A-Za-z0-9]+$")


def referenced_objects(session: Session) -> set[tuple[str, str]]:
    """Every (bucket, key) the frame index points at (reconciliation)."""
    rows = session.execute(select(frames.c.bucket, frames.c.object_key).distinct())
    return {(row.bucket, row.object_key) for row in rows}


def frames_referencing(session: Session, bucket: str, key: str, limit: int = 10) -> list[str]:
    """Frame ids whose image is `bucket`/`key` (at most `limit`)."""
    query = select(frames.c.frame_id).where(frames.c.bucket == bucket, frames.c.object_key == key)
    sha = _CONTENT_KEY_SHA.match(key)
    if sha:  # every key ingest writes is content-addressed: reach it through the sha256 index
        query = query.where(frames.c.sha256 == sha.group(1))
    return list(session.execute(query.order_by(frames.c.frame_id).limit(limit)).scalars())


# ---- serving picture --------------------------------------------------------


def apply_promotion(session: Session, msg: ModelPromoted) -> None:
    """Record the classes of the promoted version and the lines this model now serves.

    `deployments` is the whole serving picture of this model after the change: lines
    it no longer lists stop being served by it.
    """
    if msg.classes:
        session.execute(delete(model_classes).where(
            model_classes.c.model_name == msg.model_name, model_classes.c.version == msg.version
        ))
        session.execute(model_classes.insert().values(
            model_name=msg.model_name, version=msg.version, classes=json.dumps(list(msg.classes))
        ))
    session.execute(delete(deployments).where(deployments.c.model_name == msg.model_name))
    listed = [d.line_id for d in msg.deployments]
    if listed:
        session.execute(delete(deployments).where(deployments.c.line_id.in_(listed)))
    now = utcnow()
    for dep in msg.deployments:
        if not dep.production_version and not dep.canary_version:
            continue  # nothing serves this line any more
        session.execute(deployments.insert().values(
            line_id=dep.line_id,
            model_name=msg.model_name,
            triton_model=dep.triton_model or msg.model_name,
            production_version=dep.production_version,
            canary_version=dep.canary_version,
            canary_share=min(max(dep.canary_share, 0.0), 1.0),
            updated_at=now,
        ))


def load_deployments(session: Session) -> dict[str, Deployment]:
    classes = {
        (row.model_name, row.version): tuple(json.loads(row.classes))
        for row in session.execute(select(model_classes)).all()
    }

    by_model = {model: names for (model, _), names in classes.items()}

    def classes_of(model: str, version: str) -> tuple[str, ...]:
        # A version promoted before ingest ran is known only by name: versions of one
        # model share their class list unless their own promotion said otherwise.
        return classes.get((model, version), by_model.get(model, ()))

    return {
        row.line_id: Deployment(
            line_id=row.line_id,
            model_name=row.model_name,
            triton_model=row.triton_model,
            production_version=row.production_version,
            canary_version=row.canary_version,
            canary_share=row.canary_share,
            production_classes=classes_of(row.model_name, row.production_version),
            canary_classes=classes_of(row.model_name, row.canary_version),
        )
        for row in session.execute(select(deployments)).all()
    }
