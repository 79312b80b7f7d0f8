"""frames.rejected.v1: count rejections per line and reason."""

from __future__ import annotations

from lineloop.bus import EventContext
from lineloop.monitor import state
from lineloop.v1 import events_pb2


async def on_frame_rejected(msg: events_pb2.FrameRejected, ctx: EventContext) -> None:
    state.count_rejection(ctx.session, msg.line_id, events_pb2.RejectReason.Name(msg.reason))
