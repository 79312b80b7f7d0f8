"""The monitor's own state (per-frame statistics, labels, rejections, drift reports, line state)
and every SQL statement the monitor runs, behind named functions.

N replicas on PostgreSQL: frames.ingested.v1 is keyed by camera, so one line's frames reach
several replicas at once. A frame's whole effect on its line happens in the handler's one
transaction, after `open_line` has locked the line's row (SELECT ... FOR UPDATE): arrival
numbers, counters, and the drift and scoring-outage transitions are serialised per line, so
sequence numbers are unique and contiguous, no count is lost and a drift episode is reported
once (the second replica sees the first one's `drift_until`). The unique index on
(line_id, seq) holds the database to it. On SQLite (one process, the embedded stack) FOR UPDATE
is not rendered: `Database.write()` already runs the process's writers one at a time.

Cameras (per-camera windows and alerts) follow the same rule one level down: a camera's row is
locked (`open_camera`, SELECT ... FOR UPDATE) before its arrival number, outcome history or alerts
change, so two replicas handling frames of one camera (a rekeyed topic, a rebalance) or the
silence check racing a frame are serialised on it. Locks are always taken line, then camera, then
alert rows (the silence check and rejections take camera, then alerts): no cycle, no deadlock. The
partial unique index on active alerts (one per kind, line and camera) holds the database to
"raised once" even if a code path forgot the lock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    Row,
    String,
    Table,
    Text,
    and_,
    delete,
    event,
    func,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy import cast as sa_cast
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session
from sqlalchemy.schema import CreateColumn

from lineloop.storage.sql import as_utc

# v2: line counters for unscored frames and the scoring-outage state, labelled_at, the
# (line_id, seq) index. v1 databases are upgraded in place by `_upgrade` below.
# v3: the drift-score history and the model-version timeline (new tables, for the dashboard).
# v4: per-camera arrival numbers and windows (monitor_cameras, camera_seq), alerts (monitor_alerts).
SCHEMA_VERSION = 4
metadata = MetaData()

QUALITY = (
    "brightness_mean", "brightness_std", "contrast", "sharpness",
    "mean_r", "mean_g", "mean_b", "saturation_share",
)
# Statistics of the model's predictions: only frames that have one count toward them.
PREDICTION = ("confidence",)
FEATURES = QUALITY + PREDICTION

frames = Table(
    "monitor_frames", metadata,
    Column("frame_id", String(128), primary_key=True),
    Column("line_id", String(128), nullable=False),
    Column("camera_id", String(128), nullable=False),
    Column("ingested_at", DateTime(timezone=True), nullable=False, index=True),
    Column("seq", Integer, nullable=False),  # per-line arrival number, for windows
    *(Column(f, Float, nullable=False) for f in QUALITY),
    Column("confidence", Float, nullable=False),  # 0.0 and never read when unscored (see `scored`)
    Column("predicted_class", String(64), nullable=False),  # "" when ingest had no prediction
    Column("model_name", String(128), nullable=False),      # unscored: the model that should have ("": none yet)
    Column("model_version", String(64), nullable=False),    # "" when unscored
    Column("canary", Boolean, nullable=False),
    # Per-camera arrival number, for the camera's own windows; NULL on frames recorded before v4.
    Column("camera_seq", Integer, nullable=True),
)
LINE_SEQ_INDEX = "monitor_frames_line_seq"
# Windows are seq ranges of one line; unique: one arrival number per frame (see the module doc).
line_seq = Index(LINE_SEQ_INDEX, frames.c.line_id, frames.c.seq, unique=True)
# A camera's windows are camera_seq ranges of one (line, camera): the index they are read by.
camera_seq_index = Index("monitor_frames_camera_seq", frames.c.line_id, frames.c.camera_id, frames.c.camera_seq,
                         unique=True)

# A frame ingest published without a prediction (Triton down, no model deployed).
scored = frames.c.predicted_class != ""

# Human labels, kept apart from frames: a label may arrive before its frame.
labels = Table(
    "monitor_labels", metadata,
    Column("frame_id", String(128), primary_key=True),
    Column("label_class", String(64), nullable=False),
    Column("labelled_at", DateTime(timezone=True), nullable=True),  # NULL: recorded by v1
)

rejections = Table(
    "monitor_rejections", metadata,
    Column("line_id", String(128), primary_key=True),
    Column("reason", String(64), primary_key=True),
    Column("count", Integer, nullable=False),
)

lines = Table(
    "monitor_lines", metadata,
    Column("line_id", String(128), primary_key=True),
    Column("frames_seen", Integer, nullable=False),
    Column("reference_from_seq", Integer, nullable=False),  # reference window starts here
    Column("model_name", String(128), nullable=False),
    Column("drift_until", DateTime(timezone=True), nullable=True),
    Column("last_drift_id", String(64), nullable=True),
    Column("frames_unscored", Integer, nullable=False, server_default="0"),
    Column("scoring_outage_since", DateTime(timezone=True), nullable=True),  # NULL: no outage
    Column("last_missing_reason", Text, nullable=True),
)

# One row per camera seen on a line (an accepted or refused frame): its own windows, when it last
# sent, and what became of its newest frames (for the camera-refused alert).
cameras = Table(
    "monitor_cameras", metadata,
    Column("line_id", String(128), primary_key=True),
    Column("camera_id", String(128), primary_key=True),
    Column("frames_seen", Integer, nullable=False),          # accepted frames: the newest camera_seq
    Column("reference_from_seq", Integer, nullable=False),   # the camera's reference window starts here
    Column("last_frame_at", DateTime(timezone=True), nullable=False),  # newest frame, accepted or refused
    # One letter per newest frame, oldest first: "a" accepted, "r" refused (camera_refused_frames long).
    Column("recent_outcomes", String(1024), nullable=False, server_default=""),
)

# Every alert, raised and (later) cleared: WatchAlerts reads both transitions from here.
alerts = Table(
    "monitor_alerts", metadata,
    Column("alert_id", String(64), primary_key=True),
    Column("kind", Integer, nullable=False),                 # events_pb2.AlertKind
    Column("line_id", String(128), nullable=False),
    Column("camera_id", String(128), nullable=False),        # "" for the whole line
    Column("raised_at", DateTime(timezone=True), nullable=False, index=True),
    Column("cleared_at", DateTime(timezone=True), nullable=True, index=True),  # NULL: active
    # Drift alerts: the first arrival number of the evaluations that have stayed below the clear
    # level without a break (NULL: the last one did not); cleared a whole window after it.
    Column("calm_from_seq", Integer, nullable=True),
    Column("raised_event", Text, nullable=False),            # the Alert events, protobuf JSON
    Column("cleared_event", Text, nullable=True),
)
ACTIVE_ALERT_INDEX = "monitor_alerts_active"
# Line and camera first: it is also the index every frame's lookup of its camera's active alerts
# (active_alerts_of: line, camera, not cleared) reads.
Index(ACTIVE_ALERT_INDEX, alerts.c.line_id, alerts.c.camera_id, alerts.c.kind, unique=True,
      postgresql_where=alerts.c.cleared_at.is_(None), sqlite_where=alerts.c.cleared_at.is_(None))

drift_reports = Table(
    "monitor_drift", metadata,
    Column("drift_id", String(64), primary_key=True),
    Column("line_id", String(128), nullable=False, index=True),
    Column("detected_at", DateTime(timezone=True), nullable=False, index=True),
    Column("kind", Integer, nullable=False),
    Column("feature", String(64), nullable=False),
    Column("score", Float, nullable=False),
    Column("threshold", Float, nullable=False),
    Column("event", Text, nullable=False),  # the DriftDetected event, protobuf JSON
)

# Every evaluation's scores, so the dashboard can draw them over time (pruned past retention_s).
score_history = Table(
    "monitor_scores", metadata,
    Column("line_id", String(128), nullable=False),
    Column("evaluated_at", DateTime(timezone=True), nullable=False),
    Column("feature", String(64), nullable=False),
    Column("score", Float, nullable=False),
    Column("threshold", Float, nullable=False),
    Index("monitor_scores_line_time", "line_id", "evaluated_at"),
)

# Every models.promoted.v1 (every stage, not only production): the model-version timeline.
model_changes = Table(
    "monitor_model_changes", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model_name", String(128), nullable=False),
    Column("version", String(64), nullable=False),
    Column("stage", String(32), nullable=False),  # common_pb2.Stage name without the prefix
    Column("previous_stage", String(32), nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False, index=True),
    Column("actor", String(128), nullable=False),
    Column("reason", Text, nullable=False),
    Column("lines", Text, nullable=False),  # "line:production/canary@share" per deployment, for the tooltip
)


@event.listens_for(metadata, "after_create")
def _upgrade(target: MetaData, connection: Connection, **_) -> None:
    """create_all only adds missing tables: bring a v1 database's tables to v2.

    Runs under Database.migrate's lock, on every start; does nothing on a v2 database.
    """
    inspector = inspect(connection)
    for table in target.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                ddl = CreateColumn(column).compile(dialect=connection.dialect)
                connection.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {ddl}"))
    if not any(ix["name"] == LINE_SEQ_INDEX for ix in inspector.get_indexes(frames.name)):
        # v1 replicas could give two frames one number: renumber each line's frames in
        # arrival order before the unique index makes that impossible.
        duplicated = connection.execute(
            select(frames.c.line_id).group_by(frames.c.line_id, frames.c.seq).having(func.count() > 1).limit(1)
        ).first()
        if duplicated:
            connection.execute(text(
                "UPDATE monitor_frames SET seq = renumbered.n FROM (SELECT frame_id, ROW_NUMBER() OVER "
                "(PARTITION BY line_id ORDER BY seq, ingested_at, frame_id) AS n FROM monitor_frames) AS renumbered "
                "WHERE monitor_frames.frame_id = renumbered.frame_id"
            ))
            connection.execute(update(lines).values(frames_seen=select(func.coalesce(func.max(frames.c.seq), 0))
                                                    .where(frames.c.line_id == lines.c.line_id).scalar_subquery()))
        line_seq.create(connection)
    if not any(ix["name"] == camera_seq_index.name for ix in inspector.get_indexes(frames.name)):
        camera_seq_index.create(connection)  # v3 frames have camera_seq NULL: no conflict


def _insert(session: Session, table: Table):
    """INSERT with ON CONFLICT support, in the dialect of the session's database."""
    return (pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert)(table)


# ---- lines -----------------------------------------------------------------------------------

def open_line(session: Session, line_id: str, model_name: str) -> Row:
    """The line's row, created if new, locked until the transaction ends (see the module doc)."""
    line = _lock_line(session, line_id)
    if line is None:
        # Two replicas may both see no row: one inserts, the other's insert does nothing.
        session.execute(_insert(session, lines).values(
            line_id=line_id, frames_seen=0, reference_from_seq=1, model_name=model_name, frames_unscored=0,
        ).on_conflict_do_nothing(index_elements=["line_id"]))
        line = _lock_line(session, line_id)
    return line


def _lock_line(session: Session, line_id: str) -> Row | None:
    return session.execute(select(lines).where(lines.c.line_id == line_id).with_for_update()).first()


def get_line(session: Session, line_id: str) -> Row | None:
    return session.execute(select(lines).where(lines.c.line_id == line_id)).first()


def count_lines(session: Session) -> int:
    return session.execute(select(func.count()).select_from(lines)).scalar_one()


def count_frame(session: Session, line_id: str, seq: int, *, model_name: str, missing_reason: str | None) -> None:
    """The line's frame `seq` is recorded; `missing_reason` when it came without a prediction."""
    values: dict = {"frames_seen": seq}
    if model_name:
        values["model_name"] = model_name
    if missing_reason is not None:
        values["frames_unscored"] = lines.c.frames_unscored + 1
        values["last_missing_reason"] = missing_reason
    session.execute(update(lines).where(lines.c.line_id == line_id).values(**values))


def set_scoring_outage(session: Session, line_id: str, since: datetime | None) -> None:
    session.execute(update(lines).where(lines.c.line_id == line_id).values(scoring_outage_since=since))


def restart_reference(session: Session, line_id: str, model_name: str) -> None:
    """A new production model: the line's next frames are its new reference; the drift episode is over."""
    session.execute(update(lines).where(lines.c.line_id == line_id).values(
        reference_from_seq=lines.c.frames_seen + 1, drift_until=None, model_name=model_name,
    ))
    # Its cameras' too; called with the line's row locked, so no frame of the line moves them meanwhile.
    session.execute(update(cameras).where(cameras.c.line_id == line_id).values(
        reference_from_seq=cameras.c.frames_seen + 1,
    ))


# ---- cameras ---------------------------------------------------------------------------------

def open_camera(session: Session, line_id: str, camera_id: str, at: datetime) -> Row:
    """The camera's row, created if new, locked until the transaction ends (see the module doc)."""
    camera = _lock_camera(session, line_id, camera_id)
    if camera is None:
        session.execute(_insert(session, cameras).values(
            line_id=line_id, camera_id=camera_id, frames_seen=0, reference_from_seq=1, last_frame_at=at,
            recent_outcomes="",
        ).on_conflict_do_nothing(index_elements=["line_id", "camera_id"]))
        camera = _lock_camera(session, line_id, camera_id)
    return camera


def _lock_camera(session: Session, line_id: str, camera_id: str) -> Row | None:
    return session.execute(select(cameras).where(cameras.c.line_id == line_id, cameras.c.camera_id == camera_id)
                           .with_for_update()).first()


def get_camera(session: Session, line_id: str, camera_id: str) -> Row | None:
    return session.execute(select(cameras).where(cameras.c.line_id == line_id, cameras.c.camera_id == camera_id)).first()


def count_camera_frame(session: Session, camera: Row, *, at: datetime, accepted: bool, keep: int) -> str:
    """The locked camera's newest frame: accepted (numbered frames_seen + 1) or refused. Returns
    the updated outcome history (the newest `keep` frames)."""
    outcomes = (camera.recent_outcomes + ("a" if accepted else "r"))[-keep:]
    values: dict = {"recent_outcomes": outcomes, "last_frame_at": max(as_utc(camera.last_frame_at), at)}
    if accepted:
        values["frames_seen"] = camera.frames_seen + 1
    session.execute(update(cameras).where(cameras.c.line_id == camera.line_id, cameras.c.camera_id == camera.camera_id)
                    .values(**values))
    return outcomes


def silent_camera_keys(session: Session, *, quiet_since: datetime, silent_kind: int) -> Sequence[Row]:
    """(line_id, camera_id) of cameras with no frame since `quiet_since` and no active silence alert."""
    active = select(alerts.c.alert_id).where(
        alerts.c.kind == silent_kind, alerts.c.line_id == cameras.c.line_id, alerts.c.camera_id == cameras.c.camera_id,
        alerts.c.cleared_at.is_(None),
    ).exists()
    return session.execute(
        select(cameras.c.line_id, cameras.c.camera_id).where(cameras.c.last_frame_at < quiet_since, ~active)
        .order_by(cameras.c.line_id, cameras.c.camera_id)
    ).all()


# ---- frames ----------------------------------------------------------------------------------

def frame_known(session: Session, frame_id: str) -> bool:
    return session.execute(select(frames.c.frame_id).where(frames.c.frame_id == frame_id)).first() is not None


def add_frame(session: Session, values: Mapping) -> None:
    session.execute(frames.insert().values(**values))


def window_rows(session: Session, line_id: str, first_seq: int, last_seq: int, camera_id: str | None = None
                ) -> Sequence[Row]:
    """The line's frames first_seq..last_seq in arrival order: time, statistics, scored or not,
    by a canary or not. With `camera_id`: that camera's frames, numbered by its own arrival
    numbers (camera_seq)."""
    number = frames.c.seq if camera_id is None else frames.c.camera_seq
    query = select(frames.c.ingested_at, scored.label("scored"), frames.c.canary,
                   *(frames.c[f] for f in FEATURES)).where(
        frames.c.line_id == line_id, number >= first_seq, number <= last_seq)
    if camera_id is not None:
        query = query.where(frames.c.camera_id == camera_id)
    return session.execute(query.order_by(number)).all()


def unscored_among(session: Session, line_id: str, first_seq: int, last_seq: int) -> tuple[int, int]:
    """(unscored, all) frames of the line numbered first_seq..last_seq; unscored counts only the
    frames a deployed model failed to score, not those from before the line had a model."""
    row = session.execute(
        select(func.count(), func.count().filter(~scored & (frames.c.model_name != "")))
        .where(frames.c.line_id == line_id, frames.c.seq >= first_seq, frames.c.seq <= last_seq)
    ).one()
    return row[1], row[0]


def labelled_predictions(session: Session, line_id: str, after_seq: int, limit: int) -> Sequence[Row]:
    """(predicted_class, label_class) of the newest labelled frames after `after_seq`."""
    return session.execute(
        select(frames.c.predicted_class, labels.c.label_class)
        .join(labels, labels.c.frame_id == frames.c.frame_id)
        .where(frames.c.line_id == line_id, frames.c.seq > after_seq)
        .order_by(frames.c.seq.desc())
        .limit(limit)
    ).all()


def latest_model_version(session: Session, line_id: str) -> str | None:
    return session.execute(
        select(frames.c.model_version).where(frames.c.line_id == line_id, frames.c.model_version != "")
        .order_by(frames.c.seq.desc()).limit(1)
    ).scalar()


def scored_frames_with_labels(session: Session, line_id: str) -> Sequence[Row]:
    """Every retained scored frame of the line: version, prediction, human label (or None), confidence."""
    return session.execute(
        select(frames.c.model_version, frames.c.predicted_class, labels.c.label_class, frames.c.confidence)
        .outerjoin(labels, labels.c.frame_id == frames.c.frame_id)
        .where(frames.c.line_id == line_id, frames.c.model_version != "")
    ).all()


def prune(session: Session, *, older_than: datetime, reference_frames: int, current_frames: int,
          batch: int) -> int:
    """Delete up to `batch` frames (and their labels) ingested before `older_than` that no window
    needs: outside the line's reference window and before its current window. Returns how many.

    Replicas prune side by side: on PostgreSQL each skips rows another is deleting (SKIP
    LOCKED); windows only move forward, so a row no window needs now is never needed again.
    """
    victims = session.execute(
        select(frames.c.frame_id)
        .join(lines, lines.c.line_id == frames.c.line_id)
        .outerjoin(cameras, (cameras.c.line_id == frames.c.line_id) & (cameras.c.camera_id == frames.c.camera_id))
        .where(
            frames.c.ingested_at < older_than,
            frames.c.seq <= lines.c.frames_seen - current_frames,
            or_(frames.c.seq < lines.c.reference_from_seq,
                frames.c.seq >= lines.c.reference_from_seq + reference_frames),
            # Nor its camera's windows (a quiet camera's current window may be far behind the line's).
            or_(frames.c.camera_seq.is_(None), cameras.c.line_id.is_(None), and_(
                frames.c.camera_seq <= cameras.c.frames_seen - current_frames,
                or_(frames.c.camera_seq < cameras.c.reference_from_seq,
                    frames.c.camera_seq >= cameras.c.reference_from_seq + reference_frames),
            )),
        )
        .limit(batch)
        .with_for_update(of=frames, skip_locked=True)
    ).scalars().all()
    if victims:
        session.execute(delete(labels).where(labels.c.frame_id.in_(victims)))
        session.execute(delete(frames).where(frames.c.frame_id.in_(victims)))
    return len(victims)


def prune_orphan_labels(session: Session, *, older_than: datetime) -> int:
    """Labels recorded before `older_than` whose frame never reached the monitor (or is gone)."""
    result = session.execute(delete(labels).where(
        labels.c.labelled_at < older_than,
        ~select(frames.c.frame_id).where(frames.c.frame_id == labels.c.frame_id).exists(),
    ))
    return result.rowcount


# ---- labels, rejections ----------------------------------------------------------------------

def record_label(session: Session, frame_id: str, label_class: str, at: datetime) -> None:
    """The frame's human label; a newer one replaces it (an upsert: replicas may race)."""
    session.execute(_insert(session, labels).values(frame_id=frame_id, label_class=label_class, labelled_at=at)
                    .on_conflict_do_update(index_elements=["frame_id"],
                                           set_={"label_class": label_class, "labelled_at": at}))


def count_rejection(session: Session, line_id: str, reason: str) -> None:
    stmt = _insert(session, rejections).values(line_id=line_id, reason=reason, count=1)
    session.execute(stmt.on_conflict_do_update(index_elements=["line_id", "reason"],
                                               set_={"count": rejections.c.count + 1}))


def rejection_counts(session: Session, line_id: str) -> dict[str, int]:
    return dict(session.execute(
        select(rejections.c.reason, rejections.c.count).where(rejections.c.line_id == line_id)
    ).all())


# ---- drift -----------------------------------------------------------------------------------

def start_drift_episode(session: Session, line_id: str, *, until: datetime, drift_id: str, detected_at: datetime,
                        kind: int, feature: str, score: float, threshold: float, event_json: str) -> None:
    """Record a reported drift; no other is reported on the line before `until` (or a promotion)."""
    session.execute(update(lines).where(lines.c.line_id == line_id).values(drift_until=until, last_drift_id=drift_id))
    session.execute(drift_reports.insert().values(
        drift_id=drift_id, line_id=line_id, detected_at=detected_at, kind=kind, feature=feature, score=score,
        threshold=threshold, event=event_json,
    ))


def recent_drift_events(session: Session, line_id: str, limit: int) -> Sequence[str]:
    return session.execute(
        select(drift_reports.c.event).where(drift_reports.c.line_id == line_id)
        .order_by(drift_reports.c.detected_at.desc()).limit(limit)
    ).scalars().all()


def drift_events_since(session: Session, since: datetime, line_id: str = "") -> Sequence[Row]:
    """(event, detected_at) recorded after `since`, oldest first; of one line if given."""
    query = select(drift_reports.c.event, drift_reports.c.detected_at).where(
        drift_reports.c.detected_at > since).order_by(drift_reports.c.detected_at)
    if line_id:
        query = query.where(drift_reports.c.line_id == line_id)
    return session.execute(query).all()



def record_scores(session: Session, line_id: str, at: datetime, scores: Mapping[str, float],
                  thresholds: Mapping[str, float]) -> None:
    session.execute(score_history.insert(), [
        dict(line_id=line_id, evaluated_at=at, feature=f, score=v, threshold=thresholds[f]) for f, v in scores.items()
    ])


def prune_scores(session: Session, *, older_than: datetime) -> int:
    return session.execute(delete(score_history).where(score_history.c.evaluated_at < older_than)).rowcount


# ---- alerts ----------------------------------------------------------------------------------

def active_alerts_of(session: Session, line_id: str, camera_id: str | None = None) -> dict[int, Row]:
    """Active alerts by kind: of the line itself (camera_id ""), or of one camera."""
    return {r.kind: r for r in session.execute(select(alerts).where(
        alerts.c.line_id == line_id, alerts.c.camera_id == ("" if camera_id is None else camera_id),
        alerts.c.cleared_at.is_(None),
    )).all()}


def raise_alert(session: Session, *, alert_id: str, kind: int, line_id: str, camera_id: str, at: datetime,
                event_json: str) -> None:
    session.execute(alerts.insert().values(alert_id=alert_id, kind=kind, line_id=line_id, camera_id=camera_id,
                                           raised_at=at, raised_event=event_json))


def set_alert_calm(session: Session, alert_id: str, calm_from_seq: int | None) -> None:
    session.execute(update(alerts).where(alerts.c.alert_id == alert_id).values(calm_from_seq=calm_from_seq))


def clear_alert(session: Session, alert_id: str, *, at: datetime, event_json: str) -> bool:
    """Clear an active alert; False if it was cleared already (by another replica)."""
    return session.execute(update(alerts).where(alerts.c.alert_id == alert_id, alerts.c.cleared_at.is_(None))
                           .values(cleared_at=at, cleared_event=event_json)).rowcount == 1


def active_alerts(session: Session, line_id: str = "", kinds: Sequence[int] = ()) -> Sequence[Row]:
    """Active alerts, oldest first; of one line (and its cameras) and of these kinds if given."""
    query = select(alerts).where(alerts.c.cleared_at.is_(None)).order_by(alerts.c.raised_at)
    if line_id:
        query = query.where(alerts.c.line_id == line_id)
    if kinds:
        query = query.where(alerts.c.kind.in_(kinds))
    return session.execute(query).all()


def alert_events_since(session: Session, since: datetime, line_id: str = "") -> list[tuple[datetime, str]]:
    """(changed_at, Alert JSON) of every raise and clear recorded after `since`, oldest first."""
    raised = select(alerts.c.raised_at, alerts.c.raised_event).where(alerts.c.raised_at > since)
    cleared = select(alerts.c.cleared_at, alerts.c.cleared_event).where(alerts.c.cleared_at > since)
    if line_id:
        raised, cleared = raised.where(alerts.c.line_id == line_id), cleared.where(alerts.c.line_id == line_id)
    rows = [(as_utc(at), raw) for at, raw in [*session.execute(raised).all(), *session.execute(cleared).all()]]
    return sorted(rows, key=lambda r: r[0])


def prune_alerts(session: Session, *, older_than: datetime) -> int:
    return session.execute(delete(alerts).where(alerts.c.cleared_at < older_than)).rowcount


# ---- model versions --------------------------------------------------------------------------

def record_model_change(session: Session, *, model_name: str, version: str, stage: str, previous_stage: str,
                        changed_at: datetime, actor: str, reason: str, lines: str) -> None:
    session.execute(model_changes.insert().values(
        model_name=model_name, version=version, stage=stage, previous_stage=previous_stage, changed_at=changed_at,
        actor=actor, reason=reason, lines=lines,
    ))


# ---- the dashboard's reads -------------------------------------------------------------------

def all_lines(session: Session) -> Sequence[Row]:
    return session.execute(select(lines).order_by(lines.c.line_id)).all()


def camera_activity(session: Session, since: datetime) -> Sequence[Row]:
    """Per (line, camera) of the frames ingested after `since`: frames, unscored frames, last frame's time."""
    return session.execute(
        select(frames.c.line_id, frames.c.camera_id, func.count().label("frames"),
               func.count().filter(~scored).label("unscored"), func.max(frames.c.ingested_at).label("last_at"))
        .where(frames.c.ingested_at > since).group_by(frames.c.line_id, frames.c.camera_id).order_by(frames.c.line_id, frames.c.camera_id)
    ).all()


def scores_since(session: Session, since: datetime) -> Sequence[Row]:
    """(line_id, evaluated_at, feature, score, threshold) recorded after `since`, oldest first."""
    return session.execute(
        select(score_history.c.line_id, score_history.c.evaluated_at, score_history.c.feature,
               score_history.c.score, score_history.c.threshold)
        .where(score_history.c.evaluated_at > since).order_by(score_history.c.evaluated_at)
    ).all()


def version_outcomes(session: Session, since: datetime) -> Sequence[Row]:
    """Per (line, model version, canary or not) of the scored frames ingested after `since`: frames,
    labelled frames, labelled frames the model got right, mean confidence."""
    labelled = labels.c.label_class.is_not(None)
    return session.execute(
        select(frames.c.line_id, frames.c.model_version, frames.c.canary, func.count().label("frames"),
               func.count().filter(labelled).label("labelled"),
               func.count().filter(labelled, labels.c.label_class == frames.c.predicted_class).label("correct"),
               func.avg(frames.c.confidence).label("mean_confidence"))
        .outerjoin(labels, labels.c.frame_id == frames.c.frame_id)
        .where(scored, frames.c.ingested_at > since).group_by(frames.c.line_id, frames.c.model_version, frames.c.canary)
        .order_by(frames.c.line_id, frames.c.model_version, frames.c.canary)
    ).all()


def class_counts(session: Session, since: datetime) -> Sequence[Row]:
    """(line_id, model_version, predicted_class, frames) of the scored frames ingested after `since`."""
    return session.execute(
        select(frames.c.line_id, frames.c.model_version, frames.c.predicted_class, func.count().label("frames"))
        .where(scored, frames.c.ingested_at > since)
        .group_by(frames.c.line_id, frames.c.model_version, frames.c.predicted_class)
    ).all()


def confidence_counts(session: Session, since: datetime, bins: int) -> Sequence[Row]:
    """(line_id, model_version, bin, frames): the top-class confidence of scored frames ingested after
    `since`, in `bins` equal bins of 0..1 (a confidence of exactly 1 falls in the last)."""
    bin_of = func.min(sa_cast(frames.c.confidence * bins, Integer), bins - 1)
    if session.get_bind().dialect.name == "postgresql":  # PostgreSQL's min() is the aggregate only
        bin_of = func.least(sa_cast(func.floor(frames.c.confidence * bins), Integer), bins - 1)
    return session.execute(
        select(frames.c.line_id, frames.c.model_version, bin_of.label("bin"), func.count().label("frames"))
        .where(scored, frames.c.ingested_at > since).group_by(frames.c.line_id, frames.c.model_version, bin_of)
    ).all()


def frames_per_bucket(session: Session, since: datetime, bucket_s: int) -> Sequence[Row]:
    """(line_id, bucket start in epoch seconds, frames) ingested after `since`."""
    epoch = sa_cast(func.extract("epoch", frames.c.ingested_at), Integer)
    bucket = epoch - epoch % bucket_s
    return session.execute(
        select(frames.c.line_id, bucket.label("bucket"), func.count().label("frames"))
        .where(frames.c.ingested_at > since).group_by(frames.c.line_id, bucket).order_by(bucket)
    ).all()


def all_rejection_counts(session: Session) -> Sequence[Row]:
    return session.execute(select(rejections).order_by(rejections.c.line_id, rejections.c.reason)).all()


def drift_reports_recent(session: Session, limit: int) -> Sequence[Row]:
    """The newest drift reports of every line, newest first."""
    return session.execute(
        select(drift_reports.c.line_id, drift_reports.c.detected_at, drift_reports.c.kind, drift_reports.c.feature,
               drift_reports.c.score, drift_reports.c.threshold)
        .order_by(drift_reports.c.detected_at.desc()).limit(limit)
    ).all()


def model_changes_recent(session: Session, limit: int) -> Sequence[Row]:
    """The newest model-version changes, oldest first."""
    newest = select(model_changes).order_by(model_changes.c.changed_at.desc(), model_changes.c.id.desc()).limit(limit)
    return sorted(session.execute(newest).all(), key=lambda r: (r.changed_at, r.id))
