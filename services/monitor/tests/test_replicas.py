"""Two monitor replicas on one PostgreSQL database handle one line's frames at the same time.

frames.ingested.v1 is keyed by camera, so a line's cameras land on different replicas. Each
replica here is a thread with its own event loop and its own Database (its own connections and
write lock), calling the frame handler the way the bus does: one transaction per event.
"""

from __future__ import annotations

import asyncio
import threading
import uuid

import numpy as np
import pytest
from sqlalchemy import func, select

from lineloop.bus import Envelope, EventContext
from lineloop.bus import outbox
from lineloop.contracts.topics import event_type
from lineloop.monitor import state
from lineloop.monitor.handlers_frames_ingested import make_handler
from lineloop.monitor.settings import MonitorSettings
from lineloop.storage.sql import Database
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


def replica(url: str, events: list, start: threading.Barrier, errors: list) -> None:
    """Handle `events` in order, as one monitor replica would."""

    async def run() -> None:
        db = Database(url)
        handler = make_handler(SETTINGS)
        try:
            start.wait()
            for msg in events:
                async with db.write() as session:
                    envelope = Envelope(str(uuid.uuid4()), "test/ingest", event_type(msg).ce_type, None,
                                        "application/x-protobuf", {})
                    ctx = EventContext(envelope, "frames.ingested.v1", 0, 0, "lineloop/monitor")
                    ctx.session = session
                    await handler(msg, ctx)
        except Exception as exc:  # the bus would retry; here any failure is a finding
            errors.append(repr(exc))
        finally:
            db.dispose()

    asyncio.run(run())


@pytest.mark.postgres
def test_two_replicas_number_count_and_report_drift_once(postgres_url):
    db = Database(postgres_url)
    db.migrate("lineloop.monitor", state.SCHEMA_VERSION, state.metadata)
    outbox.migrate(db)
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
    assert emitted == {event_type(events_pb2.DriftDetected).topic: 1, event_type(events_pb2.TrainingRequested).topic: 1}
