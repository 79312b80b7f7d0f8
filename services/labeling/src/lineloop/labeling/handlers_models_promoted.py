"""models.promoted.v1 -> a held candidate a person moved on no longer waits for evidence.

The gate held a candidate for want of test frames (handlers_models_registered); a release
manager may decide it anyway (promote it, or archive it). Its request for evidence is then
moot: without this, the labels it asked for would cut a version, and train a model, for a
question already answered. The two topics are not ordered against each other: a promotion
handled before the registration leaves the request standing, which costs at most the one cut
that request makes.
"""

from __future__ import annotations

from lineloop.bus import EventContext
from lineloop.labeling import state
from lineloop.v1.common_pb2 import STAGE_CANDIDATE
from lineloop.v1.events_pb2 import ModelPromoted


async def on_model_promoted(msg: ModelPromoted, ctx: EventContext) -> None:
    if msg.stage != STAGE_CANDIDATE:
        state.evidence_decided(ctx.session, msg.model_name, msg.version)
