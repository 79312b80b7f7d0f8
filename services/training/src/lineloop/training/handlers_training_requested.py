"""training.requested.v1 (a person or a script asking for a run) -> queue a run."""

from __future__ import annotations

from lineloop.bus import EventContext, Reject
from lineloop.training import state
from lineloop.training.settings import TrainingSettings
from lineloop.training.job import TrainParams
from lineloop.v1.events_pb2 import TrainingRequested


def make_handler(settings: TrainingSettings, wake):
    async def on_training_requested(msg: TrainingRequested, ctx: EventContext) -> None:
        if not msg.dataset:
            raise Reject("missing_field", "dataset is required")
        ds = state.get_dataset(ctx.session, msg.dataset, msg.dataset_version)
        if ds is None:
            raise Reject("unknown_dataset", f"training has not received dataset {msg.dataset} {msg.dataset_version or '(newest)'}")
        try:
            TrainParams.from_strings(dict(msg.params))
        except ValueError as err:
            raise Reject("invalid_params", str(err)) from None
        state.enqueue(ctx.session, model_name=msg.model_name or settings.model_for(msg.dataset), dataset=msg.dataset,
                      version=ds["version"], sha256=ds["manifest_sha256"], params=dict(msg.params),
                      reason=msg.reason or "training requested", requested_by=msg.requested_by or ctx.envelope.source)
        wake()

    return on_training_requested
