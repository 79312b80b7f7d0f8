"""Registry -> Triton and edge fleets on the real stack, with real compiler builds.

Promotion loads the verified triton-onnx build into Triton as a numbered version, waits for
readiness and a smoke inference, and only then publishes; the previous production version
answers throughout; a rollback serves the previous version again; a replaced canary serves
until the next change; production rolls out a signed edge build per fleet; every version
lists its builds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
import time
import urllib.request
import uuid

import grpc
import numpy as np
import pytest
import yaml

from lineloop.bus import Bus
from lineloop.compiler.builds import BuildEnvironment, run_build
from lineloop.compiler.profiles import Tolerance, load_profiles
from lineloop.compiler.signing import DEV_PUBLIC_KEY, load_signer
from lineloop.compiler.testing import demo_data, register_event, train_demo_model, upload_dataset
from lineloop.compiler.verify import OnnxRunner
from lineloop.edge import Fleet, load_trusted_keys, verify_manifest
from lineloop.model.export import export_onnx
from lineloop.registry import handlers_models_compiled, state
from lineloop.registry.deployment import DeploymentSettings
from lineloop.registry.main import build
from lineloop.registry.settings import RegistrySettings
from lineloop.runtime import Service, StackSettings, error_info
from lineloop.serving import ServingError, TritonControl
from lineloop.storage.sql import utcnow
from lineloop.v1 import registry_pb2 as pb
from lineloop.v1.common_pb2 import Stage
from lineloop.v1.events_pb2 import BUILD_STATUS_OK, EdgeRollout, GateDecision, ModelPromoted
from lineloop.v1.registry_pb2_grpc import RegistryServiceStub

FAST = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


@functools.cache
def _models():
    data = demo_data(frames=200)
    return data, [train_demo_model(data, epochs=e, seed=s) for e, s in ((6, 0), (4, 7))]


def _registry(stack, tmp_path, fleet: Fleet) -> Service:
    """The registry exactly as `lineloop-registry` builds it, with one edge fleet."""
    fleets = tmp_path / "fleets.yaml"
    fleets.write_text(yaml.safe_dump({"fleets": {fleet.name: {
        "target": fleet.target, "models": list(fleet.models), "pilot_gateways": list(fleet.pilot_gateways)}}}))
    settings = RegistrySettings(
        grpc_port=0, metrics_port=None, database_url=f"sqlite:///{tmp_path / 'registry.db'}", auto_promote=False,
        serving_check_s=0.5,
        kafka_session_timeout_ms=FAST["session_timeout_ms"], kafka_heartbeat_interval_ms=FAST["heartbeat_interval_ms"],
        consumer_group=f"registry-{uuid.uuid4().hex[:8]}",
        deployment=DeploymentSettings(triton_repository=stack.triton_repository, fleets_file=fleets),
        stack=StackSettings(
            kafka_bootstrap=stack.kafka_bootstrap, s3_endpoint=stack.s3_endpoint, s3_access_key=stack.s3_access_key,
            s3_secret_key=stack.s3_secret_key, triton_grpc=stack.triton_grpc, triton_http=stack.triton_http,
            state_dir=tmp_path, log_format="console",
        ),
    )
    return build(settings)


def _add_version(service: Service, event, number: int) -> None:
    with service.db.transaction() as s:
        state.ensure_model(s, event.model_name)
        s.execute(state.versions.insert().values(
            model_name=event.model_name, version=str(number), number=number, run_id=f"run-{number}",
            dataset=event.dataset, dataset_version=event.dataset_version, dataset_sha256="0" * 64, parent_version="",
            code_version="test", stage="candidate", gate_state="decided",
            gate=GateDecision(passed=True, reason="test").SerializeToString(), classes=list(event.classes),
            input_size=event.input_size, onnx=event.onnx.SerializeToString(), trained=b"", registered_at=utcnow(),
        ))


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


class Prober(threading.Thread):
    """Infers on one Triton model version in a loop; every failure is kept."""

    def __init__(self, address: str, model: str, version: int, images: np.ndarray) -> None:
        super().__init__(daemon=True)
        self.triton = TritonControl(address)
        self.model, self.version, self.images = model, version, images
        self.answered, self.failures = 0, []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.triton.infer(self.model, self.images, self.version)
                self.answered += 1
            except ServingError as err:
                self.failures.append(str(err))
            time.sleep(0.01)
        self.triton.close()


async def test_promotion_serves_on_triton_without_a_gap_and_rollback_restores(stack, tmp_path, caplog):
    uid = uuid.uuid4().hex[:8]
    model_name, dataset = f"apples-{uid}", f"line-{uid}"
    fleet = Fleet(name=f"fleet-{uid}", target="onnxruntime-cpu-int8", pilot_gateways=("gw-1",))
    data, (net_a, net_b) = _models()
    onnx_a, onnx_b = export_onnx(net_a), export_onnx(net_b)
    service = _registry(stack, tmp_path, fleet)
    objects = service.objects
    manifest = upload_dataset(objects, data, dataset, "v0001")
    env = BuildEnvironment(objects, load_signer(None, tmp_path), tmp_path / "compiler", verification_frames=40)
    profiles = load_profiles()
    # The small test model is not confident enough for the production INT8 tolerance; that is the compiler's test.
    int8 = dataclasses.replace(profiles.get("onnxruntime-cpu-int8"), tolerance=Tolerance(0.8, 0.5))
    events = {}
    for number, net in ((1, net_a), (2, net_b), (3, net_b), (4, net_a)):
        events[number] = register_event(objects, net, model_name=model_name, version=str(number),
                                        dataset=dataset, dataset_version="v0001", dataset_manifest=manifest, input_size=data.input_size)

    promotions: asyncio.Queue[ModelPromoted] = asyncio.Queue()
    rollouts: asyncio.Queue[EdgeRollout] = asyncio.Queue()
    observer = Bus(stack.kafka_bootstrap, source="test/observer", **FAST)
    for kind, queue in ((ModelPromoted, promotions), (EdgeRollout, rollouts)):
        async def on_event(msg, ctx, queue=queue) -> None:
            if msg.model_name == model_name:
                await queue.put(msg)

        observer.handler(kind, group=f"observer-{kind.__name__}-{uid}")(on_event)

    await observer.start()
    try:
        async with service.running(), grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
            api = RegistryServiceStub(channel)

            async def promote(version: str, reason: str):
                return await api.Promote(pb.PromoteRequest(model_name=model_name, version=version,
                                                           to_stage=Stage.STAGE_PRODUCTION, actor="qa", reason=reason))

            for number in (1, 2, 3, 4):
                _add_version(service, events[number], number)
            # Versions 1 and 2 are built by the real compiler code, 4 (a second canary) for Triton only; 3 never is.
            triton_onnx = profiles.get("triton-onnx")
            for number, targets in ((1, (triton_onnx, int8)), (2, (triton_onnx, int8)), (4, (triton_onnx,))):
                for profile in targets:
                    build = await asyncio.to_thread(run_build, env, events[number], profile, f"b-{uid}-{number}-{profile.name}")
                    assert build.status == BUILD_STATUS_OK, build.reason
                    await observer.publish(build)
            async with asyncio.timeout(60):
                while True:
                    with service.db.session() as s:
                        if handlers_models_compiled.ok_build(s, model_name, "4", "triton-onnx"):
                            break
                    await asyncio.sleep(0.2)

            # Each version's builds, per target, as `lineloop models show` prints them.
            v2 = await api.GetVersion(pb.GetVersionRequest(model_name=model_name, version="2"))
            assert [(b.target, b.build_id, b.status) for b in v2.builds] == [
                ("onnxruntime-cpu-int8", f"b-{uid}-2-onnxruntime-cpu-int8", BUILD_STATUS_OK),
                ("triton-onnx", f"b-{uid}-2-triton-onnx", BUILD_STATUS_OK)]
            assert v2.builds[1].verification.samples > 0 and v2.builds[1].signature
            listed = await api.ListVersions(pb.ListVersionsRequest(model_name=model_name))
            assert {v.version: [b.target for b in v.builds] for v in listed.versions} == {
                "1": ["onnxruntime-cpu-int8", "triton-onnx"], "2": ["onnxruntime-cpu-int8", "triton-onnx"],
                "3": [], "4": ["triton-onnx"]}

            images = data.split("test")[0][:4]
            await promote("1", "first")
            promoted = await asyncio.wait_for(promotions.get(), 30)
            assert promoted.version == "1"
            (line,) = promoted.deployments
            assert (line.line_id, line.triton_model, line.production_version) == (dataset, model_name, "1")
            first_rollout = await asyncio.wait_for(rollouts.get(), 30)
            assert first_rollout.version == "1"

            with TritonControl(stack.triton_grpc) as triton:
                served = triton.infer(model_name, images, 1).probabilities
                np.testing.assert_allclose(served, OnnxRunner(onnx_a)(images), atol=1e-5)

            prober = Prober(stack.triton_grpc, model_name, 1, images)
            prober.start()
            try:
                await promote("2", "better")
                before = prober.answered
                await asyncio.sleep(0.3)
            finally:
                prober.stop.set()
                prober.join(10)
            assert prober.failures == [] and before > 0 and prober.answered > before
            promoted = await asyncio.wait_for(promotions.get(), 30)
            assert (promoted.version, promoted.deployments[0].production_version) == ("2", "2")
            with TritonControl(stack.triton_grpc) as triton:
                assert triton.ready_versions(model_name) == [1, 2]  # 1 serves until ingest has switched
                np.testing.assert_allclose(triton.infer(model_name, images, 2).probabilities,
                                           OnnxRunner(onnx_b)(images), atol=1e-5)

            rollout = await asyncio.wait_for(rollouts.get(), 30)
            assert (rollout.fleet, rollout.version, rollout.target) == (fleet.name, "2", "onnxruntime-cpu-int8")
            assert [(s.name, list(s.gateway_ids)) for s in rollout.stages] == [("pilot", ["gw-1"]), ("all", [])]
            manifest_bytes = await asyncio.to_thread(_fetch, rollout.manifest_url)
            manifest = verify_manifest(manifest_bytes, rollout.signature, rollout.key_id,
                                       load_trusted_keys([tmp_path / DEV_PUBLIC_KEY]), rollout.manifest_sha256)
            assert [a.sha256 for a in manifest.artifacts] == [a.sha256 for a in rollout.artifacts]

            rolled = await api.Rollback(pb.RollbackRequest(model_name=model_name, actor="qa", reason="complaints"))
            assert rolled.version == "1"
            promoted = await asyncio.wait_for(promotions.get(), 30)
            assert (promoted.version, promoted.deployments[0].production_version) == ("1", "1")
            rollback_rollout = await asyncio.wait_for(rollouts.get(), 30)
            assert (rollback_rollout.version, rollback_rollout.fleet) == ("1", fleet.name)
            with TritonControl(stack.triton_grpc) as triton:
                np.testing.assert_allclose(triton.infer(model_name, images, 1).probabilities,
                                           OnnxRunner(onnx_a)(images), atol=1e-5)

            # A canary: production and canary both served, the share carried in the event.
            await api.SetCanary(pb.SetCanaryRequest(model_name=model_name, version="2", share=0.25, actor="qa",
                                                    reason="canary"))
            promoted = await asyncio.wait_for(promotions.get(), 30)
            (line,) = promoted.deployments
            assert (line.production_version, line.canary_version, line.canary_share) == ("1", "2", 0.25)
            with TritonControl(stack.triton_grpc) as triton:
                assert triton.ready_versions(model_name) == [1, 2]

            # A new canary replaces it: the outgoing one serves until ingest has switched, and goes at the next change.
            async def canary_4(share: float) -> None:
                await api.SetCanary(pb.SetCanaryRequest(model_name=model_name, version="4", share=share, actor="qa",
                                                        reason="second canary"))
                promoted = await asyncio.wait_for(promotions.get(), 30)
                assert (promoted.deployments[0].canary_version, promoted.deployments[0].canary_share) == ("4", share)

            await canary_4(0.25)
            with TritonControl(stack.triton_grpc) as triton:
                assert triton.ready_versions(model_name) == [1, 2, 4]
            await canary_4(0.5)
            with TritonControl(stack.triton_grpc) as triton:
                async with asyncio.timeout(30):  # Triton may finish unloading a dropped version after the load returns
                    while triton.ready_versions(model_name) != [1, 4]:
                        await asyncio.sleep(0.2)

            # Triton restarts (a crash, a node drain): it comes back serving nothing, and the registry loads
            # production and canary again, with no promotion and no person.
            await asyncio.to_thread(stack.stop_server, "triton")
            await asyncio.to_thread(stack.up)
            with TritonControl(stack.triton_grpc) as triton:
                async with asyncio.timeout(60):
                    while triton.ready_versions(model_name) != [1, 4]:
                        await asyncio.sleep(0.2)
                np.testing.assert_allclose(triton.infer(model_name, images, 4).probabilities,
                                           OnnxRunner(onnx_a)(images), atol=1e-5)
            assert any(f"Triton does not serve {model_name} versions [1, 4]" in r.getMessage() for r in caplog.records)

            # No verified build: the change is refused and nothing moves.
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await promote("3", "unbuilt")
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert error_info(refused.value).reason == "DEPLOYMENT_FAILED"
            assert "no verified triton-onnx build" in refused.value.details()
            with service.db.session() as s:
                assert state.get_version_row(s, model_name, "production")["version"] == "1"
            with TritonControl(stack.triton_grpc) as triton:
                assert 3 not in triton.ready_versions(model_name)
                triton.unload(model_name)
    finally:
        await observer.stop()
