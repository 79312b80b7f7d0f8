"""labels.created.v1: human labels are the ground truth for live accuracy."""

from __future__ import annotations

from lineloop.bus import EventContext
from lineloop.monitor import state
from lineloop.storage.sql import utcnow
from lineloop.v1 import events_pb2

GROUND_TRUTH = (events_pb2.LABEL_SOURCE_HUMAN, events_pb2.LABEL_SOURCE_IMPORT)


async def on_label_created(msg: events_pb2.LabelCreated, ctx: EventContext) -> None:
    if msg.source not in GROUND_TRUTH:
        return  # a model's own label says nothing about the model
    state.record_label(ctx.session, msg.frame_id, msg.label_class, utcnow())
