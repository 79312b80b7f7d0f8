"""`models.registered.v1` -> queue builds for the cloud targets and every fleet that runs the model."""

from __future__ import annotations

import logging

from opentelemetry import metrics

from lineloop.bus import Bus, EventContext, Reject
from lineloop.compiler import state
from lineloop.compiler.profiles import ProfileCatalogue
from lineloop.compiler.worker import BuildWorker
from lineloop.edge import Fleet
from lineloop.v1.common_pb2 import STAGE_REJECTED
from lineloop.v1.events_pb2 import GATE_OUTCOME_NOT_ENOUGH_EVIDENCE, ModelRegistered

log = logging.getLogger(__name__)

_meter = metrics.get_meter("lineloop.compiler")
registrations = _meter.create_counter(
    "lineloop.compiler.registrations", unit="{version}",
    description="Registered versions seen. Attributes: outcome (queued, not_gated).",
)


def targets_for(model_name: str, catalogue: ProfileCatalogue, fleets: list[Fleet]) -> list[str]:
    """The cloud targets, then each target a fleet running this model needs, once each."""
    targets = list(catalogue.cloud_targets)
    for fleet in fleets:
        if fleet.runs(model_name) and fleet.target not in targets:
            targets.append(fleet.target)
    return targets


def problems(msg: ModelRegistered) -> list[str]:
    found = []
    if not msg.model_name or not msg.version:
        found.append("model_name and version are required")
    if not msg.onnx.bucket or not msg.onnx.key:
        found.append("onnx artifact reference is missing")
    if not msg.weights.bucket or not msg.weights.key:
        found.append("weights reference is missing (builds are verified against them)")
    if msg.input_size <= 0:
        found.append(f"input_size {msg.input_size} is not positive")
    if not msg.classes:
        found.append("classes are missing")
    if not msg.dataset or not msg.dataset_version:
        found.append("dataset version is missing (calibration and verification frames come from it)")
    if not msg.dataset_manifest.bucket or not msg.dataset_manifest.key:
        found.append("dataset manifest reference is missing (calibration and verification frames come from it)")
    return found


def subscribe(bus: Bus, group: str, catalogue: ProfileCatalogue, fleets: list[Fleet], worker: BuildWorker) -> None:
    async def on_model_registered(msg: ModelRegistered, ctx: EventContext) -> None:
        # A candidate held for want of evidence is built too: a person may promote it by hand.
        held = msg.gate.outcome == GATE_OUTCOME_NOT_ENOUGH_EVIDENCE
        if not (msg.gate.passed or held) or msg.stage == STAGE_REJECTED:
            registrations.add(1, {"outcome": "not_gated"})
            log.info("%s %s did not pass the gate: not compiled", msg.model_name, msg.version)
            return
        found = problems(msg)
        if found:
            raise Reject("invalid_model_registered", "; ".join(found))
        state.save_model(ctx.session, msg)
        for target in targets_for(msg.model_name, catalogue, fleets):
            state.ensure_build(ctx.session, msg.model_name, msg.version, target)
        registrations.add(1, {"outcome": "queued"})
        worker.wake()

    bus.handler(ModelRegistered, group=group)(on_model_registered)
