"""frames.ingested.v1 -> count frames each serving version scored (the canary policy needs it)."""

from __future__ import annotations

from sqlalchemy import update

from lineloop.bus import EventContext
from lineloop.registry import state
from lineloop.v1.common_pb2 import PredictionStatus
from lineloop.v1.events_pb2 import FrameIngested


async def on_frame_ingested(msg: FrameIngested, ctx: EventContext) -> None:
    p = msg.prediction
    if p.status != PredictionStatus.PREDICTION_STATUS_OK or not p.model_name or not p.model_version:
        return
    ctx.session.execute(update(state.versions).where(
        state.versions.c.model_name == p.model_name, state.versions.c.version == p.model_version,
        state.versions.c.stage.in_(("staging", "production")),
    ).values(frames_served=state.versions.c.frames_served + 1))
