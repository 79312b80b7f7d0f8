"""Labeling state: frames in the review queue, leases, label history, drifts, dataset versions,
the test evidence the registry's gate asked for, labels flagged as likely wrong.

Works on SQLite and PostgreSQL. Leases and dataset-cut claims are conditional
UPDATEs (`... WHERE nobody holds it`), so several replicas on one PostgreSQL
database never hand out the same frame or cut the same version twice.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    and_,
    case,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lineloop.contracts.labels import GROUND_TRUTH_SOURCES
from lineloop.v1.events_pb2 import DatasetVersioned, LabelCreated, LabelSuspect, SuspectFate

SCHEMA_COMPONENT = "labeling"
SCHEMA_VERSION = 3  # v2 added labeling_evidence_wanted, v3 labeling_label_suspects (tables only)

metadata = MetaData()

frames = Table(
    "labeling_frames",
    metadata,
    Column("frame_id", String(128), primary_key=True),
    Column("line_id", String(128), nullable=False),
    Column("camera_id", String(128), nullable=False),
    Column("image_bucket", String(255), nullable=False),
    Column("image_key", String(1024), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("captured_at", DateTime(timezone=True), nullable=False),
    Column("prediction", LargeBinary, nullable=False),     # lineloop.v1.Prediction, empty when none
    Column("predicted_class", String(64), nullable=False),  # "" without a prediction
    Column("model_name", String(128), nullable=False),
    Column("model_version", String(128), nullable=False),
    # Uncertainty of the prediction, or a uniform draw from the frame id when there is none.
    Column("base_score", Float, nullable=False),
    Column("score_kind", String(16), nullable=False),
    Column("in_queue", Boolean, nullable=False),           # False once a human labelled it
    Column("lease_id", String(64), nullable=True),
    Column("leased_by", String(128), nullable=True),
    Column("lease_expires_at", DateTime(timezone=True), nullable=True),
    Index("ix_labeling_frames_queue", "in_queue", "line_id", "base_score"),
    Index("ix_labeling_frames_sha", "sha256"),
)

leases = Table(
    "labeling_leases",
    metadata,
    Column("lease_id", String(64), primary_key=True),
    Column("frame_id", String(128), nullable=False),
    Column("annotator", String(128), nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

labels = Table(
    "labeling_labels",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("label_id", String(64), nullable=False, unique=True),
    Column("frame_id", String(128), nullable=False, index=True),
    Column("line_id", String(128), nullable=False),
    Column("camera_id", String(128), nullable=False),
    Column("label_class", String(64), nullable=False),
    Column("source", Integer, nullable=False),
    Column("annotator", String(128), nullable=False),
    Column("note", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # What makes a repeat a duplicate: `lease:<id>`, `labelstudio:<task>:<annotation>`, `model:<frame>`.
    Column("dedupe_key", String(255), nullable=True, unique=True),
    Column("event", LargeBinary, nullable=False),          # the LabelCreated as published
    Index("ix_labeling_labels_line_seq", "line_id", "seq"),
)

drifts = Table(
    "labeling_drifts",
    metadata,
    Column("drift_id", String(128), primary_key=True),
    Column("line_id", String(128), nullable=False, index=True),
    Column("camera_id", String(128), nullable=False),      # "" = the whole line
    Column("model_name", String(128), nullable=False),
    Column("model_version", String(128), nullable=False),
    Column("since", DateTime(timezone=True), nullable=False),         # frames captured from here are boosted
    Column("active_until", DateTime(timezone=True), nullable=False),
)

dataset_versions = Table(
    "labeling_dataset_versions",
    metadata,
    Column("dataset", String(128), primary_key=True),
    Column("number", Integer, primary_key=True),
    Column("version", String(32), nullable=False),
    Column("line_id", String(128), nullable=False),
    Column("manifest_sha256", String(64), nullable=False),
    Column("label_watermark", BigInteger, nullable=False),  # highest labels.seq the cut saw
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("event", LargeBinary, nullable=False),           # the DatasetVersioned as published
)

# One row per dataset: the labelled test frames the registry's gate lacked to decide its newest
# held candidate (ModelRegistered with outcome NOT_ENOUGH_EVIDENCE), per class ("" = any class).
# The queue puts such frames first and the cut policy cuts once they are labelled. Written by the
# models.registered.v1 handler; a newer decision on the dataset replaces or clears it.
evidence_wanted = Table(
    "labeling_evidence_wanted",
    metadata,
    Column("dataset", String(128), primary_key=True),
    Column("line_id", String(128), nullable=False, index=True),
    Column("model_name", String(128), nullable=False),
    Column("model_version", String(128), nullable=False),
    Column("registered_at", DateTime(timezone=True), nullable=False),  # of the decision: newer wins
    Column("wanted", Text, nullable=False),                # JSON {class: test frames still needed}
    Column("label_watermark", BigInteger, nullable=False),  # labels.seq when it was asked: count from here
    Column("asked_at", DateTime(timezone=True), nullable=False),  # a version cut since then answers it
)

# Human labels confident learning flagged as likely wrong before a cut (label_issues.py), one row
# per dataset and frame: a frame is flagged once per dataset, then its second reviewer's word
# stands. The frame goes back to the queue for someone other than `annotator`; the cut waits
# until `wait_until` for it; a ground-truth label by another person settles `fate`.
label_suspects = Table(
    "labeling_label_suspects",
    metadata,
    Column("dataset", String(128), primary_key=True),
    Column("frame_id", String(128), primary_key=True),
    Column("line_id", String(128), nullable=False),
    Column("label_id", String(64), nullable=False),         # the label flagged
    Column("label_class", String(64), nullable=False),
    Column("annotator", String(128), nullable=False),
    Column("suggested_class", String(64), nullable=False),
    Column("score", Float, nullable=False),
    Column("flagged_in", String(32), nullable=False),       # the version the flag held back
    Column("flagged_at", DateTime(timezone=True), nullable=False),
    Column("wait_until", DateTime(timezone=True), nullable=False),
    Column("fate", Integer, nullable=False),                # SuspectFate
    Column("reviewed_by", String(128), nullable=False),
    Column("final_class", String(64), nullable=False),
    Column("recorded_in", String(32), nullable=False),      # the version that listed it settled; "" until then
    Index("ix_labeling_label_suspects_frame", "frame_id", "fate"),
)

# One row per dataset: which replica is cutting it right now (a lease, like a task's).
dataset_claims = Table(
    "labeling_dataset_claims",
    metadata,
    Column("dataset", String(128), primary_key=True),
    Column("token", String(64), nullable=True),
    Column("until", DateTime(timezone=True), nullable=True),
)


# ---- frames ------------------------------------------------------------------

def frame(s: Session, frame_id: str):
    return s.execute(select(frames).where(frames.c.frame_id == frame_id)).first()


def queue_candidates(s: Session, line_id: str, now: datetime, limit: int):
    """Unleased frames waiting for a human label, best stored score first."""
    query = select(frames).where(frames.c.in_queue, _free(now)).order_by(frames.c.base_score.desc(), frames.c.frame_id)
    if line_id:
        query = query.where(frames.c.line_id == line_id)
    return s.execute(query.limit(limit)).all()


def drift_candidates(s: Session, drift, now: datetime, limit: int):
    """Unleased queued frames in a drift's scope (its line, camera, model, since when)."""
    query = select(frames).where(
        frames.c.in_queue, _free(now), frames.c.line_id == drift.line_id, frames.c.captured_at >= drift.since
    )
    if drift.camera_id:
        query = query.where(frames.c.camera_id == drift.camera_id)
    if drift.model_name:
        query = query.where(frames.c.model_name == drift.model_name)
    if drift.model_version:
        query = query.where(frames.c.model_version == drift.model_version)
    return s.execute(query.order_by(frames.c.base_score.desc(), frames.c.frame_id).limit(limit)).all()


def _free(now: datetime):
    return or_(frames.c.lease_id.is_(None), frames.c.lease_expires_at < now)


def lock_if_free(s: Session, frame_id: str, now: datetime) -> bool:
    """Row-lock the frame for this transaction if it is free and nobody else holds the lock (PostgreSQL).

    SQLite has one writer at a time, so there the lock clause is a no-op and the read is enough.
    """
    return s.execute(
        select(frames.c.frame_id)
        .where(frames.c.frame_id == frame_id, frames.c.in_queue, _free(now))
        .with_for_update(skip_locked=True)
    ).first() is not None


def try_lease(s: Session, frame_id: str, lease_id: str, annotator: str, now: datetime, expires: datetime) -> bool:
    """Take the frame if it is still queued and nobody holds a live lease on it (atomic per row)."""
    taken = s.execute(
        update(frames)
        .where(frames.c.frame_id == frame_id, frames.c.in_queue, _free(now))
        .values(lease_id=lease_id, leased_by=annotator, lease_expires_at=expires)
    ).rowcount
    if taken:
        s.execute(leases.insert().values(
            lease_id=lease_id, frame_id=frame_id, annotator=annotator, issued_at=now, expires_at=expires,
        ))
    return bool(taken)


def lease(s: Session, lease_id: str):
    return s.execute(select(leases).where(leases.c.lease_id == lease_id)).first()


def take_out_of_queue(s: Session, frame_id: str) -> None:
    s.execute(
        update(frames).where(frames.c.frame_id == frame_id)
        .values(in_queue=False, lease_id=None, leased_by=None, lease_expires_at=None)
    )


# ---- labels ------------------------------------------------------------------

def label_by_dedupe_key(s: Session, key: str) -> LabelCreated | None:
    row = s.execute(select(labels.c.event).where(labels.c.dedupe_key == key)).first()
    return LabelCreated.FromString(row.event) if row else None


def add_label(s: Session, label: LabelCreated, dedupe_key: str | None) -> None:
    s.execute(labels.insert().values(
        label_id=label.label_id, frame_id=label.frame_id, line_id=label.line_id, camera_id=label.camera_id,
        label_class=label.label_class, source=label.source, annotator=label.annotator, note=label.note,
        created_at=label.created_at.ToDatetime(tzinfo=UTC), dedupe_key=dedupe_key,
        event=label.SerializeToString(),
    ))


def label_history(s: Session, frame_id: str) -> list[LabelCreated]:
    rows = s.execute(select(labels.c.event).where(labels.c.frame_id == frame_id).order_by(labels.c.seq)).all()
    return [LabelCreated.FromString(r.event) for r in rows]


def effective(history: list[LabelCreated]) -> LabelCreated | None:
    """The latest ground-truth label (a person's, or an import someone vouched for), else the latest
    label (a model's, or an unverified import): that one trains but never enters a test split."""
    human = [label for label in history if label.source in GROUND_TRUTH_SOURCES]
    if human:
        return human[-1]
    return history[-1] if history else None


def effective_labels(s: Session, line_id: str, up_to_seq: int):
    """(frame row, effective LabelCreated) of every labelled frame of the line (all lines if empty)."""
    query = (
        select(labels.c.frame_id, labels.c.event, labels.c.source)
        .where(labels.c.seq <= up_to_seq)
        .order_by(labels.c.frame_id, labels.c.seq)
    )
    if line_id:
        query = query.where(labels.c.line_id == line_id)
    by_frame: dict[str, list[LabelCreated]] = {}
    for row in s.execute(query):
        by_frame.setdefault(row.frame_id, []).append(LabelCreated.FromString(row.event))
    if not by_frame:
        return []
    frame_rows = {
        r.frame_id: r for r in s.execute(select(frames).where(frames.c.frame_id.in_(list(by_frame)))).all()
    }
    return [(frame_rows[f], effective(h)) for f, h in sorted(by_frame.items()) if f in frame_rows]


def human_label_counts(s: Session, line_id: str) -> tuple[dict[str, int], dict[str, int]]:
    """Effective-human-label counts per class and per camera (what the queue balances against)."""
    query = select(labels.c.label_class, labels.c.camera_id, func.count()).where(labels.c.source.in_(GROUND_TRUTH_SOURCES))
    if line_id:
        query = query.where(labels.c.line_id == line_id)
    by_class: dict[str, int] = {}
    by_camera: dict[str, int] = {}
    for cls, camera, n in s.execute(query.group_by(labels.c.label_class, labels.c.camera_id)):
        by_class[cls] = by_class.get(cls, 0) + n
        by_camera[camera] = by_camera.get(camera, 0) + n
    return by_class, by_camera


def max_label_seq(s: Session) -> int:
    return s.execute(select(func.coalesce(func.max(labels.c.seq), 0))).scalar_one()


def new_human_labels(s: Session, line_id: str, after_seq: int) -> int:
    query = select(func.count()).select_from(labels).where(
        labels.c.seq > after_seq, labels.c.source.in_(GROUND_TRUTH_SOURCES)
    )
    if line_id:
        query = query.where(labels.c.line_id == line_id)
    return s.execute(query).scalar_one()


def labelled_lines(s: Session) -> list[str]:
    return list(s.execute(select(labels.c.line_id).distinct().order_by(labels.c.line_id)).scalars())


# ---- drifts ------------------------------------------------------------------

def active_drifts(s: Session, line_id: str, now: datetime):
    query = select(drifts).where(drifts.c.active_until > now)
    if line_id:
        query = query.where(drifts.c.line_id == line_id)
    return s.execute(query.order_by(drifts.c.drift_id)).all()


# ---- datasets ----------------------------------------------------------------

def head(s: Session, dataset: str):
    return s.execute(
        select(dataset_versions).where(dataset_versions.c.dataset == dataset)
        .order_by(dataset_versions.c.number.desc()).limit(1)
    ).first()


def dataset_version(s: Session, dataset: str, version: str) -> DatasetVersioned | None:
    row = s.execute(
        select(dataset_versions.c.event).where(dataset_versions.c.dataset == dataset, dataset_versions.c.version == version)
    ).first()
    return DatasetVersioned.FromString(row.event) if row else None


def list_versions(s: Session, dataset: str) -> list[DatasetVersioned]:
    query = select(dataset_versions.c.event).order_by(dataset_versions.c.dataset, dataset_versions.c.number)
    if dataset:
        query = query.where(dataset_versions.c.dataset == dataset)
    return [DatasetVersioned.FromString(r.event) for r in s.execute(query)]


def claim_dataset(s: Session, dataset: str, token: str, now: datetime, until: datetime) -> bool:
    """Take the right to cut `dataset` until `until`, unless another live claim holds it."""
    if s.execute(select(dataset_claims.c.dataset).where(dataset_claims.c.dataset == dataset)).first() is None:
        try:
            with s.begin_nested():
                s.execute(dataset_claims.insert().values(dataset=dataset, token=None, until=None))
        except IntegrityError:
            pass  # another replica created the row first
    return bool(s.execute(
        update(dataset_claims)
        .where(
            dataset_claims.c.dataset == dataset,
            or_(dataset_claims.c.token.is_(None), dataset_claims.c.until < now),
        )
        .values(token=token, until=until)
    ).rowcount)


def release_dataset(s: Session, dataset: str, token: str) -> bool:
    return bool(s.execute(
        update(dataset_claims)
        .where(and_(dataset_claims.c.dataset == dataset, dataset_claims.c.token == token))
        .values(token=None, until=None)
    ).rowcount)



def still_claimed(s: Session, dataset: str, token: str, now: datetime) -> bool:
    """True when `token` still holds a live claim (checked again in the transaction that records the cut)."""
    return s.execute(
        select(dataset_claims.c.dataset)
        .where(dataset_claims.c.dataset == dataset, dataset_claims.c.token == token, dataset_claims.c.until > now)
        .with_for_update()
    ).first() is not None


# ---- evidence the gate asked for -----------------------------------------------

def want_evidence(s: Session, dataset: str, line_id: str, model_name: str, model_version: str,
                  registered_at: datetime, wanted: dict[str, int], asked_at: datetime) -> bool:
    """Record what the newest held candidate of `dataset` lacks; False when a newer decision is recorded.

    N replicas: events of different models reach different replicas; the upsert keeps the
    newest decision whatever order they commit in (the conditional DO UPDATE).
    """
    insert = (sqlite.insert if s.get_bind().dialect.name == "sqlite" else postgresql.insert)(evidence_wanted)
    values = dict(line_id=line_id, model_name=model_name, model_version=model_version, registered_at=registered_at,
                  wanted=json.dumps(wanted, sort_keys=True), label_watermark=max_label_seq(s), asked_at=asked_at)
    result = s.execute(insert.values(dataset=dataset, **values).on_conflict_do_update(
        index_elements=[evidence_wanted.c.dataset], set_=values,
        where=evidence_wanted.c.registered_at <= insert.excluded.registered_at,
    ))
    return result.rowcount > 0


def evidence_settled(s: Session, dataset: str, registered_at: datetime) -> None:
    """A decision (passed or failed) at `registered_at`: an older request for evidence is moot."""
    s.execute(evidence_wanted.delete().where(evidence_wanted.c.dataset == dataset,
                                             evidence_wanted.c.registered_at <= registered_at))


def evidence_decided(s: Session, model_name: str, version: str) -> None:
    """The held candidate left the candidate stage (a person decided): its request is moot."""
    s.execute(evidence_wanted.delete().where(evidence_wanted.c.model_name == model_name,
                                             evidence_wanted.c.model_version == version))


def wanted_evidence(s: Session, line_id: str = "") -> list[dict]:
    """Open requests for evidence (of one line, or all), as dicts; `wanted` decoded to {class: frames}."""
    query = select(evidence_wanted).order_by(evidence_wanted.c.dataset)
    if line_id:
        query = query.where(evidence_wanted.c.line_id == line_id)
    return [{**row._asdict(), "wanted": json.loads(row.wanted)} for row in s.execute(query)]


def evidence_candidates(s: Session, line_id: str, classes: list[str], now: datetime, limit: int):
    """Unleased queued frames predicted as one of `classes` ("" among them: any frame), best stored
    score first. The caller keeps those whose image puts them in the test split."""
    query = select(frames).where(frames.c.in_queue, _free(now), frames.c.line_id == line_id)
    if "" not in classes:
        query = query.where(frames.c.predicted_class.in_(classes))
    return s.execute(query.order_by(frames.c.base_score.desc(), frames.c.frame_id).limit(limit)).all()


def human_labels_since(s: Session, line_id: str, after_seq: int) -> list:
    """(label_class, frame sha256) of the human labels on `line_id` after `after_seq`, one per frame
    (its latest): what counts towards the evidence asked for."""
    latest = (select(labels.c.frame_id, func.max(labels.c.seq).label("seq"))
              .where(labels.c.seq > after_seq, labels.c.line_id == line_id, labels.c.source.in_(GROUND_TRUTH_SOURCES))
              .group_by(labels.c.frame_id).subquery())
    return s.execute(
        select(labels.c.label_class, frames.c.sha256)
        .join(latest, labels.c.seq == latest.c.seq)
        .join(frames, frames.c.frame_id == labels.c.frame_id)
    ).all()


# ---- labels flagged as likely wrong ------------------------------------------------

def shared_images(s: Session, line_id: str) -> set[str]:
    """sha256 of images more than one frame of the line carries: a model may have trained on the
    other copy, so the prediction stored with this one is not out-of-sample."""
    query = select(frames.c.sha256).group_by(frames.c.sha256).having(func.count() > 1)
    if line_id:
        query = query.where(frames.c.line_id == line_id)
    return set(s.execute(query).scalars())


def flagged_frames(s: Session, dataset: str) -> set[str]:
    return set(s.execute(select(label_suspects.c.frame_id).where(label_suspects.c.dataset == dataset)).scalars())


def add_suspect(s: Session, **values) -> None:
    s.execute(label_suspects.insert().values(
        fate=SuspectFate.SUSPECT_FATE_PENDING, reviewed_by="", final_class="", recorded_in="", **values))
    # Back in the queue: the second reviewer finds it there (queue.py puts it first).
    s.execute(update(frames).where(frames.c.frame_id == values["frame_id"]).values(in_queue=True))


def waiting_for_review(s: Session, dataset: str, now: datetime) -> int:
    """Suspects of `dataset` still pending whose wait has not run out: the cut waits for them."""
    return s.execute(select(func.count()).select_from(label_suspects).where(
        label_suspects.c.dataset == dataset, label_suspects.c.fate == SuspectFate.SUSPECT_FATE_PENDING,
        label_suspects.c.wait_until > now,
    )).scalar_one()


def unresolved_frames(s: Session, dataset: str) -> set[str]:
    """Frames of `dataset` flagged and not yet seen by a second reviewer: kept out of the test split."""
    return set(s.execute(select(label_suspects.c.frame_id).where(
        label_suspects.c.dataset == dataset, label_suspects.c.fate == SuspectFate.SUSPECT_FATE_PENDING,
    )).scalars())


def settle_suspects(s: Session, label: LabelCreated) -> None:
    """A ground-truth label by someone other than the flagged label's author is the second review."""
    s.execute(update(label_suspects).where(
        label_suspects.c.frame_id == label.frame_id, label_suspects.c.fate == SuspectFate.SUSPECT_FATE_PENDING,
        label_suspects.c.annotator != label.annotator,
    ).values(
        fate=case((label_suspects.c.label_class == label.label_class, SuspectFate.SUSPECT_FATE_CONFIRMED),
                  else_=SuspectFate.SUSPECT_FATE_CORRECTED),
        reviewed_by=label.annotator, final_class=label.label_class,
    ))


def pending_reviews(s: Session, frame_ids: list[str]) -> dict[str, set[str]]:
    """frame -> the annotators whose labels on it wait for a second reviewer (who must be someone else)."""
    if not frame_ids:
        return {}
    out: dict[str, set[str]] = {}
    for frame_id, annotator in s.execute(select(label_suspects.c.frame_id, label_suspects.c.annotator).where(
        label_suspects.c.frame_id.in_(frame_ids), label_suspects.c.fate == SuspectFate.SUSPECT_FATE_PENDING,
    )):
        out.setdefault(frame_id, set()).add(annotator)
    return out


def review_candidates(s: Session, line_id: str, now: datetime, limit: int):
    """Unleased queued frames waiting for a second reviewer."""
    pending = select(label_suspects.c.frame_id).where(label_suspects.c.fate == SuspectFate.SUSPECT_FATE_PENDING)
    query = select(frames).where(frames.c.in_queue, _free(now), frames.c.frame_id.in_(pending))
    if line_id:
        query = query.where(frames.c.line_id == line_id)
    return s.execute(query.order_by(frames.c.frame_id).limit(limit)).all()


def suspects_to_record(s: Session, dataset: str) -> list[LabelSuspect]:
    """What the next version lists: suspects still pending, and those settled since the last version."""
    rows = s.execute(select(label_suspects).where(
        label_suspects.c.dataset == dataset,
        or_(label_suspects.c.fate == SuspectFate.SUSPECT_FATE_PENDING, label_suspects.c.recorded_in == ""),
    ).order_by(label_suspects.c.score, label_suspects.c.frame_id)).all()
    out = []
    for r in rows:
        suspect = LabelSuspect(
            frame_id=r.frame_id, label_class=r.label_class, annotator=r.annotator, suggested_class=r.suggested_class,
            score=r.score, fate=r.fate, reviewed_by=r.reviewed_by, final_class=r.final_class, flagged_in=r.flagged_in,
        )
        suspect.flagged_at.FromDatetime(r.flagged_at if r.flagged_at.tzinfo else r.flagged_at.replace(tzinfo=UTC))
        out.append(suspect)
    return out


def record_suspects(s: Session, dataset: str, version: str, frame_ids: list[str]) -> None:
    """Settled suspects a version listed are not listed again."""
    if frame_ids:
        s.execute(update(label_suspects).where(
            label_suspects.c.dataset == dataset, label_suspects.c.frame_id.in_(frame_ids),
            label_suspects.c.fate != SuspectFate.SUSPECT_FATE_PENDING,
        ).values(recorded_in=version))
