"""frames.rejected.v1: count rejections per line and reason."""

from __future__ import annotations

from sqlalchemy import select, update

from lineloop.bus import EventContext
from lineloop.monitor.state import rejections
from lineloop.v1 import events_pb2


async def on_frame_rejected(msg: events_pb2.FrameRejected, ctx: EventContext) -> None:
    reason = events_pb2.RejectReason.Name(msg.reason)
    key = (rejections.c.line_id == msg.line_id) & (rejections.c.reason == reason)
    if ctx.session.execute(select(rejections.c.count).where(key)).first():
        ctx.session.execute(update(rejections).where(key).values(count=rejections.c.count + 1))
    else:
        ctx.session.execute(rejections.insert().values(line_id=msg.line_id, reason=reason, count=1))
