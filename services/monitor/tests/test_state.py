"""The monitor's state: N replicas on one PostgreSQL database, retention, the v1 -> v2 upgrade,
the dashboard's reads on both databases.

Handlers are called the way the bus calls them: one transaction per event (`handle`).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import Column, DateTime, Float, Integer, MetaData, String, Table, func, inspect, select

from lineloop.bus import Envelope, EventContext
from lineloop.bus import outbox
from lineloop.contracts.topics import event_type
from lineloop.monitor import state, windows
from lineloop.monitor.dashboard import CONFIDENCE_BINS, snapshot
from lineloop.monitor.handlers_frames_rejected import make_handler as make_rejected_handler
from lineloop.monitor.handlers_frames_ingested import make_handler
from lineloop.monitor.handlers_labels_created import on_label_created
from lineloop.monitor.handlers_models_promoted import on_model_promoted
from lineloop.monitor.retention import Pruner
from lineloop.monitor.settings import MonitorSettings
from lineloop.storage.sql import Database, utcnow
from lineloop.v1 import common_pb2, events_pb2

SETTINGS = MonitorSettings(grpc_port=0, metrics_port=None, reference_frames=60, current_frames=30, evaluate_every=5)


def frame(line: str, i: int, rng: np.random.Generator, *, sharpness: float) -> events_pb2.FrameIngested:
    msg = events_pb2.FrameIngested(frame_id=f"{line}-{i}", line_id=line, camera_id=f"cam-{i % 2}")
    msg.ingested_at.GetCurrentTime()
    q = msg.quality
    q.brightness_mean, q.brightness_std, q.contrast = rng.normal(120, 5), rng.normal(40, 2), rng.normal(0.3, 0.02)
    q.sharpness = rng.normal(sharpness, sharpness * 0.1)
    q.mean_r, q.mean_g, q.mean_b = rng.normal(150, 5), rng.normal(90, 5), rng.normal(60, 5)
    p = msg.prediction
    p.status, p.model_name, p.model_version, p.predicted_class = common_pb2.PREDICTION_STATUS_OK, "apples", "3", "ok"
    p.scores["ok"], p.scores["rot"] = 0.9, 0.1
    return msg


async def handle(db: Database, handler, msg) -> None:
    """One event through `handler` in its own transaction, as the bus applies it."""
    async with db.write() as session:
        et = event_type(msg)
        envelope = Envelope(str(uuid.uuid4()), "test/producer", et.ce_type, None, "application/x-protobuf", {})
        ctx = EventContext(envelope, et.topic, 0, 0, "lineloop/monitor")
        ctx.session = session
        await handler(msg, ctx)


def fresh_db(url: str) -> Database:
    db = Database(url)
    db.migrate("lineloop.monitor", state.SCHEMA_VERSION, state.metadata)
    outbox.migrate(db)
    return db


def replica(url: str, events: list, start: threading.Barrier, errors: list) -> None:
    """Handle `events` in order, as one monitor replica would: its own loop, connections, write lock."""

    async def run() -> None:
        db = Database(url)
        handler = make_handler(SETTINGS)
        try:
            start.wait()
            for msg in events:
                await handle(db, handler, msg)
        except Exception as exc:  # the bus would retry; here any failure is a finding
            errors.append(repr(exc))
        finally:
            db.dispose()

    asyncio.run(run())


@pytest.mark.postgres
def test_two_replicas_number_count_and_report_drift_once(postgres_url):
    """frames.ingested.v1 is keyed by camera: one line's cameras land on different replicas."""
    db = fresh_db(postgres_url)
    line = f"line-{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(5)
    # A clean reference, then the lens gets dirty: one drift episode.
    msgs = [frame(line, i, rng, sharpness=900.0) for i in range(90)]
    msgs += [frame(line, i, rng, sharpness=150.0) for i in range(90, 200)]
    start, errors = threading.Barrier(2), []
    threads = [threading.Thread(target=replica, args=(postgres_url, [m for m in msgs if m.camera_id == cam], start, errors))
               for cam in ("cam-0", "cam-1")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []

    with db.session() as s:
        seqs = s.execute(select(state.frames.c.seq).where(state.frames.c.line_id == line)).scalars().all()
        seen = s.execute(select(state.lines.c.frames_seen).where(state.lines.c.line_id == line)).scalar_one()
        reports = s.execute(select(state.drift_reports.c.feature).where(state.drift_reports.c.line_id == line)).scalars().all()
        emitted = dict(s.execute(select(outbox.outbox.c.topic, func.count()).group_by(outbox.outbox.c.topic)).all())
    db.dispose()
    assert sorted(seqs) == list(range(1, len(msgs) + 1))  # unique and contiguous
    assert seen == len(msgs)
    assert reports == ["sharpness"]
    # One drift report; alerts raised once each: the line's drift, and each camera's against its own reference.
    assert emitted == {event_type(events_pb2.DriftDetected).topic: 1, event_type(events_pb2.Alert).topic: 3}
    with db.session() as s:
        raised = s.execute(select(state.alerts.c.kind, state.alerts.c.camera_id).where(state.alerts.c.line_id == line)).all()
    db.dispose()
    assert sorted(raised) == [(events_pb2.ALERT_KIND_LINE_DRIFT, ""), (events_pb2.ALERT_KIND_CAMERA_DRIFT, "cam-0"),
                              (events_pb2.ALERT_KIND_CAMERA_DRIFT, "cam-1")]


@pytest.mark.postgres
def test_two_replicas_handling_one_cameras_frames_number_them_once_and_alert_once(postgres_url):
    """Both replicas get frames of both cameras (a rebalance, a rekeyed topic): the camera rows'
    locks keep each camera's arrival numbers unique and contiguous and its alert raised once."""
    db = fresh_db(postgres_url)
    line = f"line-{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(15)
    msgs = [frame(line, i, rng, sharpness=900.0) for i in range(130)]
    msgs += [frame(line, i, rng, sharpness=150.0 if i % 2 else 900.0) for i in range(130, 240)]  # cam-1 dirty
    start, errors = threading.Barrier(2), []
    shares = ([m for i, m in enumerate(msgs) if i % 4 < 2], [m for i, m in enumerate(msgs) if i % 4 >= 2])
    threads = [threading.Thread(target=replica, args=(postgres_url, share, start, errors)) for share in shares]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []

    with db.session() as s:
        numbers = s.execute(select(state.frames.c.camera_id, state.frames.c.camera_seq)
                            .where(state.frames.c.line_id == line)).all()
        camera_alerts = s.execute(select(state.alerts.c.camera_id).where(
            state.alerts.c.line_id == line, state.alerts.c.kind == events_pb2.ALERT_KIND_CAMERA_DRIFT)).scalars().all()
    db.dispose()
    for camera in ("cam-0", "cam-1"):
        assert sorted(n for c, n in numbers if c == camera) == list(range(1, 121))
    assert camera_alerts == ["cam-1"]


async def test_a_camera_whose_frames_are_mostly_refused_raises_and_clears(database_url):
    db = fresh_db(database_url)
    settings = SETTINGS.model_copy(update={"camera_refused_frames": 10})
    ingested, rejected = make_handler(settings), make_rejected_handler(settings)
    line, rng = f"line-{uuid.uuid4().hex[:8]}", np.random.default_rng(16)

    def refused(i: int, camera: str = "cam-0", line_id: str = line) -> events_pb2.FrameRejected:
        return events_pb2.FrameRejected(frame_id=f"{line_id}-r{i}", line_id=line_id, camera_id=camera,
                                        reason=events_pb2.REJECT_REASON_UNDECODABLE_IMAGE)

    def camera_refused_alerts() -> list:
        with db.session() as s:
            return s.execute(select(state.alerts.c.camera_id, state.alerts.c.cleared_at.is_not(None)).where(
                state.alerts.c.line_id == line, state.alerts.c.kind == events_pb2.ALERT_KIND_CAMERA_REFUSED)).all()

    await handle(db, ingested, frame(line, 0, rng, sharpness=900.0))  # cam-0; the line is known
    for i in range(5):  # 5 of 6: not yet a window of 10
        await handle(db, rejected, refused(i))
    assert camera_refused_alerts() == []
    for i in range(5, 9):  # 9 of the newest 10 refused
        await handle(db, rejected, refused(i))
    assert camera_refused_alerts() == [("cam-0", False)]
    def passed(i: int) -> events_pb2.FrameIngested:
        msg = frame(line, i, rng, sharpness=900.0)
        msg.camera_id = "cam-0"
        return msg

    for i in range(1, 8):  # cam-0's frames pass again: 3 of the newest 10 refused, above the clear level
        await handle(db, ingested, passed(i))
    assert camera_refused_alerts() == [("cam-0", False)]
    for i in range(8, 11):  # none of the newest 10 refused
        await handle(db, ingested, passed(i))
    assert camera_refused_alerts() == [("cam-0", True)]
    await handle(db, rejected, refused(0, line_id="no-such-line"))  # unknown line: no camera row

    with db.session() as s:
        cameras = s.execute(select(state.cameras.c.line_id, state.cameras.c.camera_id)).all()
        emitted = s.execute(select(outbox.outbox.c.topic, func.count()).group_by(outbox.outbox.c.topic)).all()
    db.dispose()
    assert cameras == [(line, "cam-0")]
    assert dict(emitted)[event_type(events_pb2.Alert).topic] == 2  # raised, cleared


async def test_old_frames_no_window_needs_are_pruned(database_url):
    db = fresh_db(database_url)
    handler = make_handler(SETTINGS)
    line, rng = f"line-{uuid.uuid4().hex[:8]}", np.random.default_rng(6)
    long_ago = (utcnow() - timedelta(days=30)).replace(microsecond=0)
    msgs = [frame(line, i, rng, sharpness=900.0) for i in range(300)]
    for i, msg in enumerate(msgs):
        if i < 250:  # the last 50 are recent: retention keeps them whatever their window
            msg.ingested_at.FromDatetime(long_ago + timedelta(seconds=i))
        await handle(db, handler, msg)
    for i in (10, 100, 280):
        label = events_pb2.LabelCreated(frame_id=f"{line}-{i}", line_id=line, label_class="ok",
                                        source=events_pb2.LABEL_SOURCE_HUMAN)
        await handle(db, on_label_created, label)
    await handle(db, on_label_created, events_pb2.LabelCreated(  # a frame that never came
        frame_id=f"{line}-never", line_id=line, label_class="ok", source=events_pb2.LABEL_SOURCE_HUMAN))
    with db.transaction() as s:
        s.execute(state.labels.update().where(state.labels.c.frame_id == f"{line}-never").values(labelled_at=long_ago))

    settings = SETTINGS.model_copy(update={"retention_s": 7 * 24 * 3600.0})
    # Two cameras, alternating: each one's reference window (its first 60 frames) is line seq
    # 1..120, and its current window (its newest 30) is line seq 241..300.
    assert await Pruner(db, settings).prune_once() == (250 - 120 - 10, 1)
    assert await Pruner(db, settings).prune_once() == (0, 0)  # what is left is needed or recent

    with db.session() as s:
        seqs = set(s.execute(select(state.frames.c.seq).where(state.frames.c.line_id == line)).scalars())
        labelled = set(s.execute(select(state.labels.c.frame_id)).scalars())
        line_row = state.get_line(s, line)
    db.dispose()
    # The line's and the cameras' reference windows (seq 1..120), the cameras' current windows and
    # everything recent (seq 241..300) stay.
    assert seqs == set(range(1, 121)) | set(range(241, 301))
    assert labelled == {f"{line}-10", f"{line}-100", f"{line}-280"}
    assert line_row.frames_seen == 300  # the count does not shrink with the rows


# The monitor's tables as release v1 created them (no unscored counters, no (line_id, seq) index).
V1 = MetaData()
Table("monitor_frames", V1, Column("frame_id", String(128), primary_key=True),
      Column("line_id", String(128), nullable=False, index=True), Column("camera_id", String(128), nullable=False),
      Column("ingested_at", DateTime(timezone=True), nullable=False, index=True), Column("seq", Integer, nullable=False),
      *(Column(f, Float, nullable=False) for f in state.FEATURES), Column("predicted_class", String(64), nullable=False),
      Column("model_name", String(128), nullable=False), Column("model_version", String(64), nullable=False),
      Column("canary", state.frames.c.canary.type, nullable=False))
Table("monitor_labels", V1, Column("frame_id", String(128), primary_key=True),
      Column("label_class", String(64), nullable=False))
Table("monitor_lines", V1, Column("line_id", String(128), primary_key=True),
      Column("frames_seen", Integer, nullable=False), Column("reference_from_seq", Integer, nullable=False),
      Column("model_name", String(128), nullable=False), Column("drift_until", DateTime(timezone=True)),
      Column("last_drift_id", String(64)))


def test_a_v1_database_is_upgraded_and_its_duplicate_numbers_repaired(database_url):
    db = Database(database_url)
    db.migrate("lineloop.monitor", 1, V1)
    base = utcnow()
    with db.transaction() as s:
        s.execute(V1.tables["monitor_lines"].insert().values(line_id="l1", frames_seen=3, reference_from_seq=1,
                                                             model_name="apples"))
        for i, seq in enumerate([1, 2, 2, 3]):  # two v1 replicas gave frame 2 and 3 one number
            s.execute(V1.tables["monitor_frames"].insert().values(
                frame_id=f"f{i}", line_id="l1", camera_id="c", ingested_at=base + timedelta(seconds=i), seq=seq,
                **{f: 0.5 for f in state.FEATURES}, predicted_class="ok", model_name="apples", model_version="1",
                canary=False))
    db.migrate("lineloop.monitor", state.SCHEMA_VERSION, state.metadata)
    db.migrate("lineloop.monitor", state.SCHEMA_VERSION, state.metadata)  # and again: nothing left to do

    inspector = inspect(db.engine)
    assert {"frames_unscored", "scoring_outage_since", "last_missing_reason"} <= {
        c["name"] for c in inspector.get_columns("monitor_lines")}
    assert state.LINE_SEQ_INDEX in {ix["name"] for ix in inspector.get_indexes("monitor_frames")}
    with db.session() as s:
        seqs = dict(s.execute(select(state.frames.c.frame_id, state.frames.c.seq)).all())
        line = state.get_line(s, "l1")
    db.dispose()
    assert seqs == {"f0": 1, "f1": 2, "f2": 3, "f3": 4}
    assert line.frames_seen == 4 and line.frames_unscored == 0 and db.schema_version("lineloop.monitor") == state.SCHEMA_VERSION
    assert {state.score_history.name, state.model_changes.name} <= set(inspector.get_table_names())


def unscored(msg: events_pb2.FrameIngested, reason: str, model: str = "") -> events_pb2.FrameIngested:
    """`model`: the deployed model that failed to score it, as ingest says; "": none deployed."""
    msg.prediction.Clear()
    p = msg.prediction
    p.status, p.missing_reason, p.model_name = common_pb2.PREDICTION_STATUS_MISSING, reason, model
    return msg


async def test_a_scoring_outage_starts_and_ends_and_a_line_without_a_model_is_not_in_one(database_url):
    db = fresh_db(database_url)
    handler = make_handler(SETTINGS)  # current window: 30 frames, judged every 5
    line, new_line, rng = f"line-{uuid.uuid4().hex[:8]}", f"line-{uuid.uuid4().hex[:8]}", np.random.default_rng(8)

    def outage_since(name: str):
        with db.session() as s:
            return state.get_line(s, name).scoring_outage_since

    for i in range(30):
        await handle(db, handler, frame(line, i, rng, sharpness=900.0))
    for i in range(30, 40):  # Triton down: 10 of the newest 30 unscored, above 0.2
        await handle(db, handler, unscored(frame(line, i, rng, sharpness=900.0), "Triton UNAVAILABLE", model="apples"))
    assert outage_since(line) is not None
    for i in range(40, 70):  # back: the window fills with scored frames again
        await handle(db, handler, frame(line, i, rng, sharpness=900.0))
    assert outage_since(line) is None

    for i in range(30):  # no model deployed yet: nothing to be out of
        await handle(db, handler, unscored(frame(new_line, i, rng, sharpness=900.0), "no model deployed"))
    assert outage_since(new_line) is None
    # Its first model arrives: the frames from before it, still in the window, are no outage
    # (make chaos raised one here when its line got its first model).
    for i in range(30, 35):
        await handle(db, handler, frame(new_line, i, rng, sharpness=900.0))
    assert outage_since(new_line) is None
    with db.session() as s:
        counts = {name: state.get_line(s, name).frames_unscored for name in (line, new_line)}
    db.dispose()
    assert counts == {line: 10, new_line: 30}


async def test_the_dashboard_reads_what_the_handlers_wrote(database_url):
    db = fresh_db(database_url)
    handler = make_handler(SETTINGS)
    line, rng = f"line-{uuid.uuid4().hex[:8]}", np.random.default_rng(8)
    model = f"apples-{uuid.uuid4().hex[:6]}"
    await handle(db, on_model_promoted, events_pb2.ModelPromoted(
        model_name=model, version="4", stage=common_pb2.STAGE_PRODUCTION, previous_stage=common_pb2.STAGE_STAGING,
        reason="rollback from v5: too many false rejects",
        deployments=[events_pb2.LineDeployment(line_id=line, production_version="4")]))
    for i in range(120):
        msg = frame(line, i, rng, sharpness=900.0)
        if i % 3 == 0:  # certain: the last bin holds a confidence of exactly 1
            msg.prediction.scores["ok"], msg.prediction.scores["rot"] = 1.0, 0.0
        if i % 4 == 0:
            msg.prediction.model_version, msg.prediction.canary = "5", True
        await handle(db, handler, msg)
    for i in range(0, 40, 2):  # humans agree on frames 0, 2, 4, 6 of each 8 but 4
        await handle(db, on_label_created, events_pb2.LabelCreated(
            frame_id=f"{line}-{i}", line_id=line, label_class="rot" if i % 8 == 4 else "ok",
            source=events_pb2.LABEL_SOURCE_HUMAN))
    # Judged on its newest frame alone, cam-0 is mostly refused: an active camera alert.
    refused_on_one = SETTINGS.model_copy(update={"camera_refused_frames": 1, "camera_refused_clear_share": 0.0})
    await handle(db, make_rejected_handler(refused_on_one), events_pb2.FrameRejected(
        frame_id="x", line_id=line, camera_id="cam-0", reason=events_pb2.REJECT_REASON_IMAGE_TOO_LARGE))

    data = snapshot(db, SETTINGS)
    [camera_alert] = [a for a in data["alerts"] if a["line_id"] == line and a.get("camera_id")]
    assert (camera_alert["camera_id"], camera_alert["kind"], camera_alert["score"]) == ("cam-0", "camera refused", 1.0)
    [mine] = [entry for entry in data["lines"] if entry["line_id"] == line]
    assert mine["frames_seen"] == 120 and mine["frames_rejected"] == 1 and mine["state"] == "ok"
    versions = {(v["model_version"], v["role"]): v for v in data["versions"] if v["line_id"] == line}
    assert versions.keys() == {("3", "production"), ("5", "canary")}
    # Labelled: even frames below 40; canary ones are multiples of 4, 2 of 10 of them (4, 12, ...) wrong.
    canary, production = versions[("5", "canary")], versions[("3", "production")]
    assert (canary["frames"], canary["labelled"], canary["accuracy"]) == (30, 10, pytest.approx(0.5))
    assert (production["labelled"], production["accuracy"]) == (10, 1.0)
    assert canary["accuracy_low"] < 0.5 < canary["accuracy_high"] and production["accuracy_high"] == pytest.approx(1.0)
    histogram = data["confidence_histograms"][line]
    assert len(histogram["3"]) == CONFIDENCE_BINS and sum(histogram["3"]) + sum(histogram["5"]) == 120
    # 0.9 is 0.89999998 as the event's float: bin 17 of 20 (0.85..0.9), not 18.
    assert histogram["3"][-1] + histogram["5"][-1] == 40 and histogram["3"][17] + histogram["5"][17] == 80
    assert data["class_shares"][line] == {"3": {"ok": 90}, "5": {"ok": 30}}
    assert sum(data["throughput"][line]["frames"]) == 120
    assert data["refusals"][line] == {"image_too_large": 1}
    # Windows full at frame 90, judged every 5 frames up to 120: 7 evaluations.
    assert {f: len(v["score"]) for f, v in data["drift_scores"][line].items()} == {f: 7 for f in state.FEATURES}
    [change] = [c for c in data["model_changes"] if c["model_name"] == model]
    assert (change["kind"], change["version"], change["lines"]) == ("rollback", "4", f"{line}: production v4")
    assert {c["camera_id"]: c["frames"] for c in data["cameras"] if c["line_id"] == line} == {"cam-0": 60, "cam-1": 60}

    with db.transaction() as s:  # frames older than the page's history are left out of its charts
        s.execute(state.frames.update().where(state.frames.c.line_id == line, state.frames.c.seq <= 20)
                  .values(ingested_at=utcnow() - timedelta(seconds=SETTINGS.dashboard_history_s + 60)))
    data = snapshot(db, SETTINGS)
    assert sum(data["throughput"][line]["frames"]) == 100
    assert sum(v["frames"] for v in data["versions"] if v["line_id"] == line) == 100
    assert sum(c["frames"] for c in data["cameras"] if c["line_id"] == line) == 100
    assert next(entry for entry in data["lines"] if entry["line_id"] == line)["frames_seen"] == 120

    with db.transaction() as s:  # the score history is pruned past retention like frames
        s.execute(state.score_history.update().where(state.score_history.c.line_id == line)
                  .values(evaluated_at=utcnow() - timedelta(days=30)))
    await Pruner(db, SETTINGS).prune_once()
    with db.session() as s:
        left = s.execute(select(func.count()).select_from(state.score_history)
                         .where(state.score_history.c.line_id == line)).scalar_one()
    db.dispose()
    assert left == 0


async def test_a_canarys_answers_do_not_move_the_lines_prediction_statistics(database_url):
    # A canary far less sure than production serves half the frames: the frames have not
    # changed, so the line has not drifted (the canary is judged on its own live evidence).
    db = fresh_db(database_url)
    handler = make_handler(SETTINGS)  # reference 60 frames, current 30
    line, rng = f"line-{uuid.uuid4().hex[:8]}", np.random.default_rng(9)
    for i in range(90):
        msg = frame(line, i, rng, sharpness=900.0)
        msg.prediction.scores["ok"] = rng.uniform(0.8, 0.95)
        if i >= 60 and i % 2:
            msg.prediction.canary, msg.prediction.model_version = True, "4"
            msg.prediction.scores["ok"] = rng.uniform(0.3, 0.45)
        await handle(db, handler, msg)
    with db.session() as s:
        judgement = windows.judge(s, state.get_line(s, line), SETTINGS)
        drift_reports = s.execute(select(func.count()).select_from(state.drift_reports).where(
            state.drift_reports.c.line_id == line)).scalar_one()
    db.dispose()
    assert len(judgement.current.values["confidence"]) == 15  # production's frames of the 30
    assert len(judgement.current.values["sharpness"]) == 30   # quality statistics: every frame
    assert not judgement.drifted and drift_reports == 0, judgement.scores
