"""models.promoted.v1: a new production model starts a new reference window on its lines."""

from __future__ import annotations

from lineloop.bus import EventContext
from lineloop.monitor import state
from lineloop.v1 import common_pb2, events_pb2


async def on_model_promoted(msg: events_pb2.ModelPromoted, ctx: EventContext) -> None:
    if msg.stage != common_pb2.STAGE_PRODUCTION:
        return
    # In line order: two replicas promoting at once lock the lines' rows in the same order.
    for line_id in sorted({d.line_id for d in msg.deployments}):
        # Frames scored by the new model (after drift, under the new conditions)
        # become what "normal" looks like; the drift episode is over.
        state.restart_reference(ctx.session, line_id, msg.model_name)
