"""models.promoted.v1 → which model version (and canary) scores each line."""

from __future__ import annotations

import logging

from lineloop.bus import EventContext, Reject
from lineloop.ingest import state
from lineloop.ingest.scoring import ServingPicture, TritonScorer
from lineloop.v1.events_pb2 import ModelPromoted

log = logging.getLogger(__name__)


def make_handler(serving: ServingPicture, scorer: TritonScorer):
    async def on_models_promoted(msg: ModelPromoted, ctx: EventContext) -> None:
        lines = [d.line_id for d in msg.deployments]
        if len(set(lines)) != len(lines):
            # One line served twice by one picture: which entry wins is undefined (the index's key refused it).
            twice = sorted({line for line in lines if lines.count(line) > 1})
            raise Reject("invalid_event", f"{msg.model_name}:{msg.version} lists line(s) {twice[:5]!r} more than once")
        shares = [d.canary_share for d in msg.deployments if not 0.0 <= d.canary_share <= 1.0]
        if shares:
            raise Reject("invalid_event", f"{msg.model_name}:{msg.version}: canary_share {shares[0]!r} is outside 0..1")
        state.apply_promotion(ctx.session, msg)
        # This replica re-reads the picture at its next frame (the handler commits
        # before any other task runs); other replicas within deployment_refresh_s.
        serving.invalidate()
        scorer.forget_models()  # a re-deployed version may have new metadata
        log.info(
            "serving picture of %s after %s:%s: %s", msg.model_name, msg.model_name, msg.version,
            [(d.line_id, d.production_version, d.canary_version, d.canary_share) for d in msg.deployments],
        )

    return on_models_promoted
