"""labels.created.v1: human labels are the ground truth for live accuracy."""

from __future__ import annotations

from sqlalchemy import select, update

from lineloop.bus import EventContext
from lineloop.monitor.state import labels
from lineloop.v1 import events_pb2

GROUND_TRUTH = (events_pb2.LABEL_SOURCE_HUMAN, events_pb2.LABEL_SOURCE_IMPORT)


async def on_label_created(msg: events_pb2.LabelCreated, ctx: EventContext) -> None:
    if msg.source not in GROUND_TRUTH:
        return  # a model's own label says nothing about the model
    s = ctx.session
    if s.execute(select(labels.c.frame_id).where(labels.c.frame_id == msg.frame_id)).first():
        s.execute(update(labels).where(labels.c.frame_id == msg.frame_id).values(label_class=msg.label_class))
    else:
        s.execute(labels.insert().values(frame_id=msg.frame_id, label_class=msg.label_class))
