"""models.promoted.v1: a new production model starts a new reference window on its lines."""

from __future__ import annotations

from sqlalchemy import update

from lineloop.bus import EventContext
from lineloop.monitor.state import lines
from lineloop.v1 import common_pb2, events_pb2


async def on_model_promoted(msg: events_pb2.ModelPromoted, ctx: EventContext) -> None:
    if msg.stage != common_pb2.STAGE_PRODUCTION:
        return
    for deployment in msg.deployments:
        # Frames scored by the new model (after drift, under the new conditions)
        # become what "normal" looks like; the drift episode is over.
        ctx.session.execute(
            update(lines).where(lines.c.line_id == deployment.line_id).values(
                reference_from_seq=lines.c.frames_seen + 1, drift_until=None, model_name=msg.model_name,
            )
        )
