"""drift.detected.v1 -> boost the drifting camera/model's recent frames; cut datasets sooner."""

from __future__ import annotations

from datetime import UTC, timedelta

from sqlalchemy import select

from lineloop.bus import EventContext, Reject
from lineloop.labeling import labels, state
from lineloop.labeling.settings import LabelingSettings
from lineloop.v1.events_pb2 import DriftDetected


def make_handler(cfg: LabelingSettings):
    async def on_drift_detected(msg: DriftDetected, ctx: EventContext) -> None:
        if not msg.drift_id or not msg.line_id:
            raise Reject("invalid_drift", f"drift {msg.drift_id!r} lacks drift_id or line_id")
        s = ctx.session
        if s.execute(select(state.drifts.c.drift_id).where(state.drifts.c.drift_id == msg.drift_id)).first():
            return
        detected = msg.detected_at.ToDatetime(tzinfo=UTC) if msg.HasField("detected_at") else labels.utcnow()
        # Frames from the start of the window the monitor found drifting (else from detection on).
        since = msg.current.start.ToDatetime(tzinfo=UTC) if msg.current.HasField("start") else detected
        s.execute(state.drifts.insert().values(
            drift_id=msg.drift_id, line_id=msg.line_id, camera_id=msg.camera_id, model_name=msg.model_name,
            model_version=msg.model_version, since=since,
            active_until=detected + timedelta(seconds=cfg.drift_active_s),  # a replayed old drift stays inactive
        ))

    return on_drift_detected
