"""models.promoted.v1 → which model version (and canary) scores each line."""

from __future__ import annotations

import logging

from lineloop.bus import EventContext
from lineloop.ingest import state
from lineloop.ingest.scoring import ServingPicture
from lineloop.v1.events_pb2 import ModelPromoted

log = logging.getLogger(__name__)


def make_handler(serving: ServingPicture):
    async def on_models_promoted(msg: ModelPromoted, ctx: EventContext) -> None:
        state.apply_promotion(ctx.session, msg)
        # Seen after commit at the latest refresh; this replica refreshes at once.
        ctx.session.flush()
        serving.invalidate()
        log.info(
            "serving picture of %s after %s:%s: %s", msg.model_name, msg.model_name, msg.version,
            [(d.line_id, d.production_version, d.canary_version, d.canary_share) for d in msg.deployments],
        )

    return on_models_promoted
