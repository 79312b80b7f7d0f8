"""models.trained.v1 -> a new candidate version, its gate still to run (worker.py)."""

from __future__ import annotations

from lineloop.bus import EventContext, Reject
from lineloop.registry import state
from lineloop.storage.sql import utcnow
from lineloop.v1.events_pb2 import ModelTrained


def make_handler(wake):
    async def on_model_trained(msg: ModelTrained, ctx: EventContext) -> None:
        missing = [f for f in ("model_name", "run_id", "dataset", "dataset_version") if not getattr(msg, f)]
        if missing:
            raise Reject("missing_field", f"models.trained.v1 lacks {', '.join(missing)}")
        for ref, what in ((msg.onnx, "ONNX file"), (msg.weights, "weights"), (msg.dataset_manifest, "dataset manifest")):
            if not ref.bucket or not ref.key:
                raise Reject("missing_artifact", f"run {msg.run_id} has no {what} reference")
        if len(set(msg.classes)) < 2 or len(set(msg.classes)) != len(msg.classes):
            raise Reject("invalid_classes", f"run {msg.run_id} classes {list(msg.classes)}: need 2+ distinct")
        if msg.input_size <= 0:
            raise Reject("invalid_input_size", f"run {msg.run_id} input_size {msg.input_size}")
        s = ctx.session
        if state.version_by_run(s, msg.model_name, msg.run_id) is not None:
            return  # the same run delivered again (another event id): registered once
        version, number = state.allocate_version(s, msg.model_name)
        s.execute(state.versions.insert().values(
            model_name=msg.model_name, version=version, number=number, run_id=msg.run_id, dataset=msg.dataset,
            dataset_version=msg.dataset_version, dataset_sha256=msg.dataset_sha256, parent_version=msg.parent_version,
            code_version=msg.code_version, stage="candidate", gate_state="pending", classes=list(msg.classes),
            input_size=msg.input_size, onnx=msg.onnx.SerializeToString(), trained=msg.SerializeToString(),
            registered_at=utcnow(),
        ))
        state.add_transition(s, msg.model_name, version, "", "candidate", "registry",
                             f"registered from run {msg.run_id} ({msg.dataset} {msg.dataset_version})", msg.test_metrics)
        wake()

    return on_model_trained
