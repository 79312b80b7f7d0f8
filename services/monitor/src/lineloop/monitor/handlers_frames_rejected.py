"""frames.rejected.v1: count rejections per line and reason; a camera whose frames are mostly
refused raises its own alert (lineloop.monitor.alerts)."""

from __future__ import annotations

from lineloop.bus import EventContext
from lineloop.monitor import state
from lineloop.monitor.handlers_frames_ingested import on_camera_frame
from lineloop.monitor.settings import MonitorSettings
from lineloop.storage.sql import utcnow
from lineloop.v1 import events_pb2


def make_handler(settings: MonitorSettings):
    async def on_frame_rejected(msg: events_pb2.FrameRejected, ctx: EventContext) -> None:
        state.count_rejection(ctx.session, msg.line_id, events_pb2.RejectReason.Name(msg.reason))
        # Cameras of known lines only: a refusal's ids are whatever a sender wrote (an unknown
        # line, an invalid id), and must not grow the camera table without bound.
        if not msg.camera_id or state.get_line(ctx.session, msg.line_id) is None:
            return
        at = msg.rejected_at.ToDatetime(tzinfo=utcnow().tzinfo) if msg.HasField("rejected_at") else utcnow()
        camera = state.open_camera(ctx.session, msg.line_id, msg.camera_id, at)
        on_camera_frame(ctx, camera, settings, accepted=False, at=at)

    return on_frame_rejected
