"""labels.created.v1: human labels are the ground truth for live accuracy."""

from __future__ import annotations

from lineloop.bus import EventContext
from lineloop.contracts.labels import GROUND_TRUTH_SOURCES
from lineloop.monitor import state
from lineloop.storage.sql import utcnow
from lineloop.v1 import events_pb2



async def on_label_created(msg: events_pb2.LabelCreated, ctx: EventContext) -> None:
    if msg.source not in GROUND_TRUTH_SOURCES:
        return  # a model's own label says nothing about the model; an unverified import is no ground truth
    state.record_label(ctx.session, msg.frame_id, msg.label_class, utcnow())
