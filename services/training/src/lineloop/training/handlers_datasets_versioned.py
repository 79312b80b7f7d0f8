"""datasets.versioned.v1 -> remember the dataset version and queue a run for its model."""

from __future__ import annotations

from lineloop.bus import EventContext, Reject
from lineloop.training import state
from lineloop.training.settings import TrainingSettings
from lineloop.v1.events_pb2 import DatasetVersioned


def make_handler(settings: TrainingSettings, wake):
    async def on_dataset_versioned(msg: DatasetVersioned, ctx: EventContext) -> None:
        if not msg.dataset or not msg.version:
            raise Reject("missing_field", "dataset and version are required")
        if not msg.manifest.bucket or not msg.manifest.key:
            raise Reject("missing_manifest", f"{msg.dataset} {msg.version} has no manifest reference")
        if len(set(msg.classes)) < 2:
            raise Reject("too_few_classes", f"{msg.dataset} {msg.version} declares classes {list(msg.classes)}; a classifier needs 2+")
        state.record_dataset(ctx.session, dataset=msg.dataset, version=msg.version, bucket=msg.manifest.bucket,
                             key=msg.manifest.key, sha256=msg.manifest.sha256, classes=sorted(set(msg.classes)),
                             line_id=msg.line_id)
        state.enqueue(ctx.session, model_name=settings.model_for(msg.dataset), dataset=msg.dataset, version=msg.version,
                      sha256=msg.manifest.sha256, params={}, reason=f"dataset {msg.dataset} {msg.version} cut"
                      + (f": {msg.reason}" if msg.reason else ""), requested_by=msg.created_by or "labeling")
        wake()

    return on_dataset_versioned
