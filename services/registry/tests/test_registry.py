"""Registry on the real stack: gate, bootstrap, stages with history, rollback, canary policy, bad input.

Candidates are crafted, not trained: an InspectionNet whose head always answers
one class has exactly known metrics on a test split, so every gate number below
is computed by hand, and the registry's own onnxruntime evaluation must match it.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import uuid

import grpc
import pytest
import torch
from prometheus_client import REGISTRY
from typer.testing import CliRunner

from lineloop.bus import Bus
from lineloop.cli.models import app as models_cli
from lineloop.contracts.catalogue import bucket
from lineloop.model.export import export_onnx
from lineloop.model.net import InspectionNet, ModelSpec, checkpoint
from lineloop.model.synthetic import write_dataset
from lineloop.registry.deployer import Serving
from lineloop.registry.main import build
from lineloop.registry.settings import RegistrySettings
from lineloop.runtime import StackSettings, error_info
from lineloop.runtime.client import ClientCredentials, aio_channel
from lineloop.runtime.pki import jwks_json, mint_token, rsa_key
from lineloop.runtime.settings import SecuritySettings
from lineloop.storage.objects import ObjectStore
from lineloop.v1 import registry_pb2 as pb
from lineloop.v1.common_pb2 import Stage
from lineloop.v1.events_pb2 import GateOutcome, LineDeployment, ModelPromoted, ModelRegistered, ModelTrained
from lineloop.v1.monitor_pb2 import ModelHealth, VersionHealth
from lineloop.v1.monitor_pb2_grpc import MonitorServiceServicer, add_MonitorServiceServicer_to_server
from lineloop.v1.registry_pb2_grpc import RegistryServiceStub

CLASSES = ["bruise", "ok", "rot", "scab"]
# The registry only judges, so most frames go to the test split: ok 192, bruise/rot/scab 64 each.
# That is enough for the statistical gate to decide on the constant models below at its default
# confidence and margins (two identical models need about 52 frames of a class to show it).
PER_CLASS = {"ok": 240, "bruise": 80, "rot": 80, "scab": 80}
SPLIT_SHARES = (0.1, 0.1, 0.8)
# A test split too small for any decision (ok 3, bruise/rot/scab 1 each): not enough evidence.
FEW = {"ok": 15, "bruise": 5, "rot": 5, "scab": 5}


def dataset(store, name: str, version: str, seed: int, per_class=None, datasets_bucket: str = ""):
    if per_class is None:
        return write_dataset(store, name, version, per_class=PER_CLASS, split_shares=SPLIT_SHARES, size=32, seed=seed,
                             datasets_bucket=datasets_bucket)
    return write_dataset(store, name, version, per_class=per_class, size=32, seed=seed, datasets_bucket=datasets_bucket)


def stack_settings(stack) -> StackSettings:
    return StackSettings(kafka_bootstrap=stack.kafka_bootstrap, s3_endpoint=stack.s3_endpoint,
                         s3_access_key=stack.s3_access_key, s3_secret_key=stack.s3_secret_key,
                         state_dir=stack.state_dir, log_format="console")


def registry_settings(stack, tmp_path, **overrides) -> RegistrySettings:
    return RegistrySettings(**{
        "database_url": f"sqlite:///{tmp_path / 'registry.db'}", "grpc_port": 0, "metrics_port": None,
        "consumer_group": f"registry-test-{uuid.uuid4().hex[:8]}", "kafka_session_timeout_ms": 6000,
        "kafka_heartbeat_interval_ms": 1000, "poll_interval_s": 0.2, "cache_dir": tmp_path / "cache",
        "floor_accuracy": 0.4, "floor_ok_false_positive_rate": 0.1, "canary_min_frames": 3, "monitor_grpc": "",
        "stack": stack_settings(stack), **overrides})


def constant_model(answer: str) -> InspectionNet:
    """A net that answers `answer` for every image (zero head weights, one large bias)."""
    model = InspectionNet(ModelSpec(classes=tuple(CLASSES), width=4, input_size=32)).eval()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(-5.0)
        model.head.bias[CLASSES.index(answer)] = 5.0
    return model


def trained_event(store: ObjectStore, model_name: str, dataset_event, answer: str) -> ModelTrained:
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    model = constant_model(answer)
    prefix = f"{model_name}/{run_id}/"
    buf = io.BytesIO()
    torch.save(checkpoint(model), buf)
    weights = store.put_bytes(bucket("models"), prefix + "weights.pt", buf.getvalue(), "application/octet-stream")
    onnx = store.put_bytes(bucket("models"), prefix + "model.onnx", export_onnx(model), "application/onnx")
    return ModelTrained(model_name=model_name, run_id=run_id, dataset=dataset_event.dataset,
                        dataset_version=dataset_event.version, dataset_sha256=dataset_event.manifest.sha256,
                        code_version="test", artifact_prefix=f"{bucket('models')}/{prefix}", weights=weights.to_proto(),
                        onnx=onnx.to_proto(), classes=CLASSES, input_size=32, dataset_manifest=dataset_event.manifest)


class SlowDeployer:
    """Records calls; takes a while, like loading a model into Triton."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.calls: list[tuple[str, int, float]] = []

    async def on_stage_change(self, version, stage, canary_share):
        self.calls.append((version.version, stage, canary_share))
        await asyncio.sleep(self.delay_s)
        return Serving(lines=[LineDeployment(line_id="line-test", triton_model=version.model_name,
                                             production_version=version.version if stage == Stage.STAGE_PRODUCTION else "",
                                             canary_version=version.version if stage == Stage.STAGE_STAGING else "",
                                             canary_share=canary_share)])

    async def restore(self, serving):
        return []


@pytest.fixture
def store(stack) -> ObjectStore:
    return ObjectStore.from_url(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key)


async def until(fetch, check, timeout_s: float = 60.0, what: str = "condition"):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            value = await fetch()
        except grpc.aio.AioRpcError as err:  # not there yet
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise
            value = err
        if not isinstance(value, grpc.aio.AioRpcError) and check(value):
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last value: {value}")
        await asyncio.sleep(0.2)


class Events:
    """A test-side consumer of what the registry publishes, on its own group."""

    def __init__(self, stack, model_name: str) -> None:
        self.model_name = model_name
        self.registered: list[ModelRegistered] = []
        self.promoted: list[ModelPromoted] = []
        self.bus = Bus(stack.kafka_bootstrap, source="test/registry", session_timeout_ms=6000, heartbeat_interval_ms=1000)
        group = f"test-{uuid.uuid4().hex[:8]}"

        async def on_registered(msg, ctx):
            if msg.model_name == model_name:
                self.registered.append(msg)

        async def on_promoted(msg, ctx):
            if msg.model_name == model_name:
                self.promoted.append(msg)

        self.bus.handler(ModelRegistered, group=group)(on_registered)
        self.bus.handler(ModelPromoted, group=group)(on_promoted)


async def test_gate_bootstrap_rejection_canary_promotion_and_rollback(stack, store, tmp_path):
    model = f"apples-{uuid.uuid4().hex[:6]}"
    ds = await asyncio.to_thread(dataset, store, model, "v0001", 3)
    deployer = SlowDeployer()
    monitor = LiveAccuracy(model, model)
    server = grpc.aio.server()
    add_MonitorServiceServicer_to_server(monitor, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    service = build(registry_settings(stack, tmp_path, monitor_grpc=f"127.0.0.1:{port}"), deployer=deployer)
    events = Events(stack, model)
    await events.bus.start()
    try:
        async with service.running(), grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
            api = RegistryServiceStub(channel)

            async def version(v):
                return await api.GetVersion(pb.GetVersionRequest(model_name=model, version=v))

            # 1. Bootstrap: always-"ok" scores 192/384 = 0.5, its lower bound about 0.46 >= floor 0.4; ok FPR 0,
            # its upper bound about 0.014 <= 0.1 -> production.
            first = trained_event(store, model, ds.event, "ok")
            await events.bus.publish(first)
            v1 = await until(lambda: version("1"), lambda v: v.stage == Stage.STAGE_PRODUCTION, what="v1 in production")
            assert v1.gate.passed and v1.gate.baseline_version == ""
            assert v1.onnx == first.onnx and v1.weights == first.weights  # where training said, for warm starts
            assert v1.gate.candidate.accuracy == pytest.approx(0.5)
            assert v1.gate.candidate.ok_false_positive_rate == 0.0
            assert v1.dataset == model and v1.dataset_version == "v0001" and v1.run_id.startswith("run-")
            assert "production" in v1.aliases and "latest" in v1.aliases
            assert [(h.from_stage, h.to_stage, h.actor) for h in v1.history] == [
                (Stage.STAGE_UNSPECIFIED, Stage.STAGE_CANDIDATE, "registry"),
                (Stage.STAGE_CANDIDATE, Stage.STAGE_PRODUCTION, "registry:auto_promote")]
            assert v1.history[1].metrics.accuracy == pytest.approx(0.5)

            # 2. A worse candidate: always-"rot" is 1/6 accurate and rejects every ok frame: shown worse, failed.
            await events.bus.publish(trained_event(store, model, ds.event, "rot"))
            v2 = await until(lambda: version("2"), lambda v: v.gate.reason != "", what="v2 gated")
            assert v2.stage == Stage.STAGE_REJECTED and not v2.gate.passed
            assert v2.gate.baseline_version == "1"
            checks = {c.name: c for c in v2.gate.checks}
            assert checks["accuracy"].candidate == pytest.approx(1 / 6) and checks["accuracy"].baseline == pytest.approx(0.5)
            assert not checks["accuracy"].passed and checks["accuracy"].outcome == GateOutcome.GATE_OUTCOME_FAILED
            assert checks["accuracy"].upper < -0.02 and checks["accuracy"].frames == 384
            assert checks["ok_false_positive_rate"].candidate == 1.0 and checks["ok_false_positive_rate"].baseline == 0.0
            assert checks["ok_false_positive_rate"].outcome == GateOutcome.GATE_OUTCOME_FAILED and checks["recall:rot"].passed
            assert v2.gate.outcome == GateOutcome.GATE_OUTCOME_FAILED and v2.gate.confidence == pytest.approx(0.95)
            assert "accuracy 0.1667 vs production 0.5000 (worse by more than the margin" in v2.gate.reason
            assert v2.history[-1].to_stage == Stage.STAGE_REJECTED and v2.history[-1].actor == "registry:gate"

            # Promoting the rejected version is refused with the gate's reason.
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await api.Promote(pb.PromoteRequest(model_name=model, version="2", to_stage=Stage.STAGE_PRODUCTION,
                                                    actor="qa@plant", reason="try"))
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert error_info(err.value).reason == "VERSION_FAILED_GATE" and "accuracy" in err.value.details()

            # 3. An equal candidate (the same answers on every frame) passes and becomes the canary; once the
            # monitor counts its served frames (and its live accuracy is as good) it becomes production.
            await events.bus.publish(trained_event(store, model, ds.event, "ok"))
            v3 = await until(lambda: version("3"), lambda v: v.stage == Stage.STAGE_STAGING, what="v3 canary")
            assert v3.canary_share == pytest.approx(0.1) and "canary" in v3.aliases
            assert v3.gate.passed and v3.gate.baseline_version == "1"
            monitor.versions = [VersionHealth(model_version="1", frames_scored=5000, frames_labelled=2000, live_accuracy=0.9),
                                VersionHealth(model_version="3", frames_scored=2, frames_labelled=2000, live_accuracy=0.9)]
            await asyncio.sleep(1.0)  # several policy passes: 2 frames < canary_min_frames 3, still the canary
            v3 = await version("3")
            assert v3.stage == Stage.STAGE_STAGING and v3.frames_served == 2 and v3.hold_reason == ""
            monitor.versions[1].frames_scored = 3
            v3 = await until(lambda: version("3"), lambda v: v.stage == Stage.STAGE_PRODUCTION, what="v3 production")
            assert v3.frames_served == 3 and v3.history[-1].reason.startswith("canary served 3 frames (policy: 3)")
            v1 = await version("1")
            assert v1.stage == Stage.STAGE_ARCHIVED and v1.history[-1].reason == "replaced by v3"

            # 4. Rollback restores v1; the history of both says who, why and with which numbers.
            rolled = await api.Rollback(pb.RollbackRequest(model_name=model, actor="qa@plant", reason="bad apples on line 2"))
            assert rolled.version == "1" and rolled.stage == Stage.STAGE_PRODUCTION
            last = rolled.history[-1]
            assert (last.from_stage, last.to_stage, last.actor) == (Stage.STAGE_ARCHIVED, Stage.STAGE_PRODUCTION, "qa@plant")
            assert last.reason == "rollback from v3: bad apples on line 2" and last.metrics.accuracy == pytest.approx(0.5)
            assert last.at.seconds > 0
            v3 = await version("3")
            assert [h.to_stage for h in v3.history] == [
                Stage.STAGE_CANDIDATE, Stage.STAGE_STAGING, Stage.STAGE_PRODUCTION, Stage.STAGE_ARCHIVED]
            assert (await version("production")).version == "1"

            # Every change went through the deployer, and was published with the serving picture and classes.
            assert [(v, s) for v, s, _ in deployer.calls] == [
                ("1", Stage.STAGE_PRODUCTION), ("3", Stage.STAGE_STAGING), ("3", Stage.STAGE_PRODUCTION),
                ("1", Stage.STAGE_PRODUCTION)]
            promoted = await until(lambda: asyncio.sleep(0, events.promoted), lambda p: len(p) >= 4, what="4 promotions")
            assert [(p.version, p.stage) for p in promoted] == [(v, s) for v, s, _ in deployer.calls]
            assert promoted[1].deployments[0].canary_version == "3" and promoted[1].deployments[0].canary_share == pytest.approx(0.1)
            assert list(promoted[-1].classes) == CLASSES and promoted[-1].actor == "qa@plant"
            registered = await until(lambda: asyncio.sleep(0, events.registered), lambda r: len(r) >= 3, what="3 registrations")
            assert [(r.version, r.gate.passed, r.stage) for r in registered] == [
                ("1", True, Stage.STAGE_CANDIDATE), ("2", False, Stage.STAGE_REJECTED), ("3", True, Stage.STAGE_CANDIDATE)]
            assert registered[1].gate.candidate.accuracy == pytest.approx(1 / 6)
            # The compiler builds from these: the locations training announced, passed on unchanged.
            assert (registered[0].onnx, registered[0].weights, registered[0].dataset_manifest) == (
                first.onnx, first.weights, ds.event.manifest)

            # 5. Judged on a newer dataset version whose test split is tiny (6 frames), an equal candidate is
            # neither passed nor failed: not enough evidence. It is held as a candidate with the classes that
            # lack labels, in its history and `lineloop models show`; the policy leaves it; a person may decide.
            # Labeling wrote this version to another bucket (LINELOOP_LABELING_DATASETS_BUCKET): the gate
            # finds it where the event says, not in the catalogue's datasets bucket.
            moved = f"{bucket('datasets')}-moved"
            await store.aio.ensure_buckets([moved])
            few = await asyncio.to_thread(dataset, store, model, "v0002", 7, FEW, moved)
            assert few.event.manifest.bucket == moved
            await events.bus.publish(trained_event(store, model, few.event, "ok"))
            v4 = await until(lambda: version("4"), lambda v: v.gate.reason != "", what="v4 gated")
            assert v4.gate.outcome == GateOutcome.GATE_OUTCOME_NOT_ENOUGH_EVIDENCE and not v4.gate.passed
            assert v4.stage == Stage.STAGE_CANDIDATE and v4.gate.dataset_version == f"{model}/v0002"
            assert v4.gate.reason.startswith("not enough evidence at 95% confidence: ")
            for cls in ("bruise", "rot", "scab"):
                assert f"class {cls}: 1 labelled test frames, about" in v4.gate.reason, v4.gate.reason
            assert v4.hold_reason == v4.gate.reason and v4.held_since.seconds > 0
            assert [(h.from_stage, h.to_stage, h.actor, h.reason) for h in v4.history][-1] == (
                Stage.STAGE_CANDIDATE, Stage.STAGE_CANDIDATE, "registry:gate", v4.gate.reason)
            await asyncio.sleep(1.0)  # several policy passes: still a candidate, production unchanged
            assert (await version("4")).stage == Stage.STAGE_CANDIDATE and (await version("production")).version == "1"
            env = {"LINELOOP_REGISTRY_GRPC": f"127.0.0.1:{service.grpc_port}", "COLUMNS": "250"}
            shown = await asyncio.to_thread(CliRunner().invoke, models_cli, ["show", model, "4"], env=env)
            assert shown.exit_code == 0, shown.output
            text = " ".join(shown.output.split())
            assert "gate: not enough evidence on" in text and "held since" in text and "class scab: 1 labelled" in text
            registered = await until(lambda: asyncio.sleep(0, events.registered), lambda r: len(r) >= 4, what="v4 registered")
            assert (registered[3].gate.outcome, registered[3].stage) == (
                GateOutcome.GATE_OUTCOME_NOT_ENOUGH_EVIDENCE, Stage.STAGE_CANDIDATE)
            canary = await api.Promote(pb.PromoteRequest(model_name=model, version="4", to_stage=Stage.STAGE_STAGING,
                                                         actor="qa@plant", reason="the fix line 2 waits for"))
            assert canary.stage == Stage.STAGE_STAGING and canary.hold_reason == ""
            assert canary.history[-1].reason == f"the fix line 2 waits for (overrides the hold: {v4.gate.reason})"
    finally:
        await events.bus.stop()
        await server.stop(None)


async def test_bad_requests_get_specific_statuses_and_change_nothing(stack, store, tmp_path, database_url):
    """On SQLite and PostgreSQL: the promotion lease is a conditional UPDATE, not an in-process lock."""
    model = f"pears-{uuid.uuid4().hex[:6]}"
    ds = await asyncio.to_thread(dataset, store, model, "v0001", 4)
    deployer = SlowDeployer(delay_s=1.0)
    service = build(registry_settings(stack, tmp_path, auto_promote=False, database_url=database_url), deployer=deployer)
    publisher = Bus(stack.kafka_bootstrap, source="test/registry")
    await publisher.start()
    try:
        async with service.running(), grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
            api = RegistryServiceStub(channel)

            async def version(v):
                return await api.GetVersion(pb.GetVersionRequest(model_name=model, version=v))

            async def expect(call, code, reason):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call
                assert err.value.code() == code, err.value.details()
                assert error_info(err.value).reason == reason
                return err.value.details()

            await expect(api.Promote(pb.PromoteRequest(model_name=model, version="9", to_stage=Stage.STAGE_PRODUCTION,
                                                       actor="qa")), grpc.StatusCode.NOT_FOUND, "UNKNOWN_VERSION")
            await expect(api.Rollback(pb.RollbackRequest(model_name=model, actor="qa")),
                         grpc.StatusCode.FAILED_PRECONDITION, "NO_PRODUCTION")
            await expect(api.GetVersion(pb.GetVersionRequest(model_name=model, version="production")),
                         grpc.StatusCode.NOT_FOUND, "UNKNOWN_VERSION")

            await publisher.publish(trained_event(store, model, ds.event, "ok"))
            await publisher.publish(trained_event(store, model, ds.event, "ok"))
            for v in ("1", "2"):
                await until(lambda v=v: version(v), lambda r: r.gate.reason != "", what=f"v{v} gated")
            # auto_promote is off: both wait as candidates.
            assert (await version("1")).stage == Stage.STAGE_CANDIDATE
            await expect(api.Promote(pb.PromoteRequest(model_name=model, version="1", to_stage=Stage.STAGE_PRODUCTION)),
                         grpc.StatusCode.INVALID_ARGUMENT, "MISSING_FIELD")
            await expect(api.SetCanary(pb.SetCanaryRequest(model_name=model, version="1", share=1.5, actor="qa")),
                         grpc.StatusCode.INVALID_ARGUMENT, "INVALID_SHARE")

            # Two concurrent promotions of one model: one wins, the other is ABORTED, state is whole.
            first = asyncio.ensure_future(api.Promote(pb.PromoteRequest(
                model_name=model, version="1", to_stage=Stage.STAGE_PRODUCTION, actor="alice", reason="first")))
            await asyncio.sleep(0.3)  # alice's change is deploying
            details = await expect(api.Promote(pb.PromoteRequest(
                model_name=model, version="2", to_stage=Stage.STAGE_PRODUCTION, actor="bob", reason="second")),
                grpc.StatusCode.ABORTED, "CONCURRENT_PROMOTION")
            assert "in progress" in details
            assert (await first).stage == Stage.STAGE_PRODUCTION
            assert (await version("2")).stage == Stage.STAGE_CANDIDATE
            assert [h.actor for h in (await version("2")).history] == ["registry"]

            await expect(api.Promote(pb.PromoteRequest(model_name=model, version="1", to_stage=Stage.STAGE_PRODUCTION,
                                                       actor="qa")), grpc.StatusCode.FAILED_PRECONDITION,
                         "INVALID_TRANSITION")
            await expect(api.Rollback(pb.RollbackRequest(model_name=model, actor="qa")),
                         grpc.StatusCode.FAILED_PRECONDITION, "NO_PREVIOUS_PRODUCTION")

            # A deployer failure leaves every stage as it was.
            async def broken(version, stage, share):
                raise RuntimeError("triton refused to load")
            deployer.on_stage_change = broken
            details = await expect(api.SetCanary(pb.SetCanaryRequest(model_name=model, version="2", share=0.25, actor="qa")),
                                   grpc.StatusCode.UNAVAILABLE, "DEPLOYMENT_FAILED")
            assert "triton refused to load" in details
            assert (await version("2")).stage == Stage.STAGE_CANDIDATE
            listed = await api.ListVersions(pb.ListVersionsRequest(model_name=model))
            assert [(v.version, v.stage) for v in listed.versions] == [
                ("2", Stage.STAGE_CANDIDATE), ("1", Stage.STAGE_PRODUCTION)]
    finally:
        await publisher.stop()


class LiveAccuracy(MonitorServiceServicer):
    """Stands in for the monitor's GetModelHealth: live accuracy per version, as given, for one model.

    A registry in a fresh consumer group reads the topics from the start, so it also holds (and asks
    about) the models earlier tests published; those get no versions, as from a monitor that saw none.
    """

    def __init__(self, line: str, model: str) -> None:
        self.line, self.model = line, model
        self.versions: list[VersionHealth] = []
        self.asked: list[tuple[str, str]] = []

    async def GetModelHealth(self, request, context):
        self.asked.append((request.line_id, request.model_name))
        if (request.line_id, request.model_name) != (self.line, self.model):
            return ModelHealth(line_id=request.line_id, model_name=request.model_name)
        return ModelHealth(line_id=self.line, model_name=self.model, versions=self.versions)


async def test_a_canary_worse_live_than_production_is_archived_not_promoted(stack, store, tmp_path):
    """Live accuracy decides beside frames served, by the gate's rule (unpaired: different frames)."""
    model = f"plums-{uuid.uuid4().hex[:6]}"
    ds = await asyncio.to_thread(dataset, store, model, "v0001", 5)
    monitor = LiveAccuracy(model, model)
    server = grpc.aio.server()
    add_MonitorServiceServicer_to_server(monitor, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    service = build(registry_settings(stack, tmp_path, monitor_grpc=f"127.0.0.1:{port}"),
                    deployer=SlowDeployer())
    publisher = Bus(stack.kafka_bootstrap, source="test/registry")
    await publisher.start()
    try:
        async with service.running(), grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
            api = RegistryServiceStub(channel)

            async def version(v):
                return await api.GetVersion(pb.GetVersionRequest(model_name=model, version=v))

            await publisher.publish(trained_event(store, model, ds.event, "ok"))
            await until(lambda: version("1"), lambda v: v.stage == Stage.STAGE_PRODUCTION, what="v1 production")
            await publisher.publish(trained_event(store, model, ds.event, "ok"))
            await until(lambda: version("2"), lambda v: v.stage == Stage.STAGE_STAGING, what="v2 canary")
            # 0.7 on 40 labelled frames vs 0.9 on 50: worse by more than the margin even at the bounds.
            monitor.versions = [VersionHealth(model_version="1", frames_scored=500, frames_labelled=50, live_accuracy=0.9),
                                VersionHealth(model_version="2", frames_scored=40, frames_labelled=40, live_accuracy=0.7)]
            v2 = await until(lambda: version("2"), lambda v: v.stage == Stage.STAGE_ARCHIVED, what="v2 archived")
            last = v2.history[-1]
            assert (last.from_stage, last.actor) == (Stage.STAGE_STAGING, "registry:auto_promote")
            assert "live accuracy 0.700 on 40 labelled frames vs production v1 0.900 on 50 (difference -0.3" in last.reason
            assert (model, model) in monitor.asked
            assert (await version("production")).version == "1"
    finally:
        await publisher.stop()
        await server.stop(None)


async def test_without_a_monitor_a_canary_is_held_not_promoted_on_a_count(stack, store, tmp_path):
    """The monitor owns canary evidence (frames served, live accuracy); the registry counts nothing itself."""
    model = f"pears-{uuid.uuid4().hex[:6]}"
    ds = await asyncio.to_thread(dataset, store, model, "v0001", 8)
    service = build(registry_settings(stack, tmp_path, monitor_grpc=""), deployer=SlowDeployer())
    publisher = Bus(stack.kafka_bootstrap, source="test/registry")
    await publisher.start()
    try:
        async with service.running(), grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
            api = RegistryServiceStub(channel)

            async def version(v):
                return await api.GetVersion(pb.GetVersionRequest(model_name=model, version=v))

            await publisher.publish(trained_event(store, model, ds.event, "ok"))
            await until(lambda: version("1"), lambda v: v.stage == Stage.STAGE_PRODUCTION, what="v1 production")
            await publisher.publish(trained_event(store, model, ds.event, "ok"))
            v2 = await until(lambda: version("2"), lambda v: v.hold_reason != "", what="v2 held")
            assert v2.stage == Stage.STAGE_STAGING and v2.frames_served == 0
            assert v2.hold_reason.startswith("no monitor configured (LINELOOP_REGISTRY_MONITOR_GRPC)"), v2.hold_reason
    finally:
        await publisher.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def canary_holds(model: str, cause: str) -> float:
    """lineloop_registry_canary_holds_total{model=...,cause=...} as /metrics serves it (by model: other
    tests' registries count their own holds in this process)."""
    return sum(sample.value for family in REGISTRY.collect() for sample in family.samples
               if sample.name == "lineloop_registry_canary_holds_total"
               and sample.labels.get("model") == model and sample.labels.get("cause") == cause)


async def test_a_canary_without_live_evidence_is_held_until_the_evidence_arrives_or_a_person_decides(
        stack, store, tmp_path, database_url):
    """Fails closed: a canary that has served its frames is not promoted while the monitor is unreachable or
    labels are too few; it is held, with the reason in `lineloop models show`, until they come or a person decides.
    On SQLite and PostgreSQL: a hold is one row per version, written with a conditional insert/update."""
    model = f"quinces-{uuid.uuid4().hex[:6]}"
    ds = await asyncio.to_thread(dataset, store, model, "v0001", 6)
    monitor_port = free_port()  # nothing listens here yet: the monitor is down
    monitor = LiveAccuracy(model, model)
    service = build(registry_settings(stack, tmp_path, monitor_grpc=f"127.0.0.1:{monitor_port}",
                                      monitor_timeout_s=2.0, database_url=database_url), deployer=SlowDeployer())
    publisher = Bus(stack.kafka_bootstrap, source="test/registry")
    await publisher.start()
    server = None
    before = {cause: canary_holds(model, cause) for cause in ("monitor_unreachable", "too_few_labels")}
    try:
        async with service.running(), grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
            api = RegistryServiceStub(channel)

            async def version(v):
                return await api.GetVersion(pb.GetVersionRequest(model_name=model, version=v))

            await publisher.publish(trained_event(store, model, ds.event, "ok"))
            await until(lambda: version("1"), lambda v: v.stage == Stage.STAGE_PRODUCTION, what="v1 production")
            await publisher.publish(trained_event(store, model, ds.event, "ok"))
            await until(lambda: version("2"), lambda v: v.stage == Stage.STAGE_STAGING, what="v2 canary")

            # 1. The monitor, which owns the evidence, is unreachable: how many frames the canary served and how
            # well is unknown: held, not promoted.
            v2 = await until(lambda: version("2"), lambda v: v.hold_reason != "", what="v2 held")
            assert v2.stage == Stage.STAGE_STAGING
            assert v2.hold_reason.startswith(f"monitor unreachable: UNAVAILABLE at 127.0.0.1:{monitor_port}"), v2.hold_reason
            assert v2.held_since.seconds > 0
            await asyncio.sleep(1.0)  # several policy passes (0.2 s apart): still held
            assert (await version("2")).stage == Stage.STAGE_STAGING
            assert (await version("production")).version == "1"
            assert canary_holds(model, "monitor_unreachable") == before["monitor_unreachable"] + 1  # once per hold, not per pass

            # `lineloop models show` says so, and `--json` carries the field.
            env = {"LINELOOP_REGISTRY_GRPC": f"127.0.0.1:{service.grpc_port}", "COLUMNS": "200"}
            shown = await asyncio.to_thread(CliRunner().invoke, models_cli, ["show", model, "2"], env=env)
            assert shown.exit_code == 0, shown.output
            assert "held since" in shown.output and "monitor unreachable: UNAVAILABLE" in " ".join(shown.output.split())
            shown = await asyncio.to_thread(CliRunner().invoke, models_cli, ["show", model, "2", "--json"], env=env)
            assert json.loads(shown.output)["hold_reason"].startswith("monitor unreachable:")

            # 2. The monitor answers, but 3 labels of the canary cannot show it is not worse: still held.
            add_MonitorServiceServicer_to_server(monitor, server := grpc.aio.server())
            assert server.add_insecure_port(f"127.0.0.1:{monitor_port}") == monitor_port
            await server.start()
            monitor.versions = [VersionHealth(model_version="1", frames_scored=500, frames_labelled=50, live_accuracy=0.9),
                                VersionHealth(model_version="2", frames_scored=3, frames_labelled=3, live_accuracy=1.0)]
            v2 = await until(lambda: version("2"), lambda v: "labelled" in v.hold_reason, what="v2 held for labels")
            assert v2.stage == Stage.STAGE_STAGING and v2.frames_served == 3  # the monitor's count
            assert v2.hold_reason.startswith("not enough evidence at 95% confidence that canary v2 is not worse"), v2.hold_reason
            assert "live accuracy 1.000 on 3 labelled frames vs production v1 0.900 on 50; about" in v2.hold_reason
            assert canary_holds(model, "too_few_labels") == before["too_few_labels"] + 1

            # 3. The labels arrive and the canary is as good: the policy decides, and the hold ends.
            monitor.versions = [VersionHealth(model_version="1", frames_scored=5000, frames_labelled=2000, live_accuracy=0.9),
                                VersionHealth(model_version="2", frames_scored=2000, frames_labelled=2000, live_accuracy=0.9)]
            v2 = await until(lambda: version("2"), lambda v: v.stage == Stage.STAGE_PRODUCTION, what="v2 production")
            assert v2.hold_reason == "" and not v2.HasField("held_since")
            last = v2.history[-1]
            assert (last.from_stage, last.actor) == (Stage.STAGE_STAGING, "registry:auto_promote")
            assert "live accuracy 0.900 on 2000 labelled frames vs production v1 0.900 on 2000" in last.reason

            # 4. A person decides for a held canary: promoted by hand, the history says it overrode the hold.
            await publisher.publish(trained_event(store, model, ds.event, "ok"))
            await until(lambda: version("3"), lambda v: v.stage == Stage.STAGE_STAGING, what="v3 canary")
            monitor.versions.append(VersionHealth(model_version="3", frames_scored=3))
            v3 = await until(lambda: version("3"), lambda v: v.hold_reason != "", what="v3 held")
            assert "live accuracy 0.000 on 0 labelled frames" in v3.hold_reason and "no labelled frames" in v3.hold_reason
            promoted = await api.Promote(pb.PromoteRequest(model_name=model, version="3", to_stage=Stage.STAGE_PRODUCTION,
                                                           actor="qa@plant", reason="line 2 needs the fix now"))
            assert promoted.stage == Stage.STAGE_PRODUCTION and promoted.hold_reason == ""
            last = promoted.history[-1]
            assert (last.from_stage, last.actor) == (Stage.STAGE_STAGING, "qa@plant")
            assert last.reason == f"line 2 needs the fix now (overrides the hold: {v3.hold_reason})"
    finally:
        await publisher.stop()
        if server is not None:
            await server.stop(None)


async def test_with_auth_the_history_records_the_callers_identity_not_the_requests_actor(stack, store, tmp_path):
    """Issue 11: the audit trail says who really promoted (token `sub`), whatever `actor` the request claims."""
    model = f"quinces-{uuid.uuid4().hex[:6]}"
    ds = await asyncio.to_thread(dataset, store, model, "v0001", 6)
    key, jwks = rsa_key(), tmp_path / "jwks.json"
    jwks.write_text(jwks_json({"k1": key.public_key()}))
    security = SecuritySettings(auth_mode="required", auth_issuer="https://id.test", auth_audience="lineloop",
                                auth_jwks_file=jwks)

    def token(sub: str, role: str) -> ClientCredentials:
        return ClientCredentials(token=mint_token(key, issuer="https://id.test", audience="lineloop", subject=sub,
                                                  roles=[role], kid="k1"))

    service = build(registry_settings(stack, tmp_path, auto_promote=False, security=security), deployer=SlowDeployer())
    publisher = Bus(stack.kafka_bootstrap, source="test/registry")
    await publisher.start()
    try:
        async with service.running():
            target = f"127.0.0.1:{service.grpc_port}"
            async with aio_channel(target, token("svc-training", "service")) as reader:
                api = RegistryServiceStub(reader)
                await publisher.publish(trained_event(store, model, ds.event, "ok"))
                await until(lambda: api.GetVersion(pb.GetVersionRequest(model_name=model, version="1")),
                            lambda v: v.gate.reason != "", what="v1 gated")
                # a service may read, not promote
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await api.Promote(pb.PromoteRequest(model_name=model, version="1", to_stage=Stage.STAGE_PRODUCTION))
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "release-manager" in err.value.details()
            async with aio_channel(target, token("rm-alice", "release-manager")) as channel:
                promoted = await RegistryServiceStub(channel).Promote(pb.PromoteRequest(
                    model_name=model, version="1", to_stage=Stage.STAGE_PRODUCTION, actor="mallory", reason="ship it"))
            assert (promoted.stage, promoted.history[-1].actor) == (Stage.STAGE_PRODUCTION, "rm-alice")
            async with grpc.aio.insecure_channel(target) as anonymous:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await RegistryServiceStub(anonymous).Rollback(pb.RollbackRequest(model_name=model, actor="mallory"))
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await publisher.stop()
