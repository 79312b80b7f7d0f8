"""The edge agent on the real broker and store, with builds signed by the real compiler code.

It installs a signed build from edge.rollouts.v1 and predicts with it; it refuses a rollout
whose artifact was tampered with, or whose signature does not match, dead-letters it with
the reason, and keeps predicting with the model it had, without a gap. It follows the
rollout's staged plan (pilot gateways at once, the rest after the stage delay) and trusts
the keys it is configured with (option, LINELOOP_EDGE_TRUSTED_KEYS, else the dev key).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from lineloop.bus import Bus
from lineloop.compiler.builds import BuildEnvironment, run_build
from lineloop.compiler.profiles import Tolerance, load_profiles
from lineloop.compiler.signing import DEV_PUBLIC_KEY, load_signer
from lineloop.cli.main import app
from lineloop.compiler.testing import CLASSES, DemoData, demo_data, register_event, train_demo_model, upload_dataset
from lineloop.edge import EdgeSettings, load_trusted_keys
from lineloop.edge.agent import AgentSetupError, EdgeAgent, admitting_stage, running_agent
from lineloop.edge.manifest import public_key_pem
from lineloop.model.export import export_onnx
from lineloop.storage.objects import ObjectStore
from lineloop.v1.common_pb2 import PREDICTION_SOURCE_EDGE, PREDICTION_STATUS_MISSING, PREDICTION_STATUS_OK
from lineloop.v1.events_pb2 import BUILD_STATUS_OK, EdgeRollout, RolloutStage

FAST = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


@functools.cache
def _models():
    data = demo_data(frames=160)
    return data, [train_demo_model(data, epochs=e, seed=s) for e, s in ((5, 0), (4, 3))]


@dataclasses.dataclass(frozen=True)
class Signed:
    """Two versions of one model, compiled and signed by the real compiler code (dev key under `state_dir`)."""

    uid: str
    model_name: str
    data: DemoData
    onnx_a: bytes  # version 1's model file, to tamper with version 2
    objects: ObjectStore
    builds: dict
    state_dir: Path


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def signed(stack, tmp_path_factory) -> Signed:
    uid = uuid.uuid4().hex[:8]
    model_name, dataset = f"apples-{uid}", f"line-{uid}"
    state_dir = tmp_path_factory.mktemp("signed")
    data, (net_a, net_b) = _models()
    objects = ObjectStore.from_url(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key)
    manifest = upload_dataset(objects, data, dataset, "v0001")
    env = BuildEnvironment(objects, load_signer(None, state_dir), state_dir / "compiler", verification_frames=32)
    profile = dataclasses.replace(load_profiles().get("onnxruntime-cpu-int8"), tolerance=Tolerance(0.8, 0.5))
    builds = {}
    for version, net in (("1", net_a), ("2", net_b)):
        event = register_event(objects, net, model_name=model_name, version=version, dataset=dataset,
                               dataset_version="v0001", dataset_manifest=manifest, input_size=data.input_size)
        builds[version] = await asyncio.to_thread(run_build, env, event, profile, f"b-{uid}-{version}")
        assert builds[version].status == BUILD_STATUS_OK, builds[version].reason
    return Signed(uid, model_name, data, export_onnx(net_a), objects, builds, state_dir)


def _rollout(objects: ObjectStore, build, fleet: str, **changes) -> EdgeRollout:
    url = objects.presigned_get(build.manifest.bucket, build.manifest.key, timedelta(hours=1))
    rollout = EdgeRollout(
        rollout_id=f"r-{uuid.uuid4().hex[:8]}", fleet=fleet, model_name=build.model_name, version=build.version,
        target=build.target, manifest_url=url, manifest_sha256=build.manifest.sha256, artifacts=list(build.artifacts),
        signature=build.signature, key_id=build.key_id,
        stages=[RolloutStage(name="pilot", gateway_ids=["gw-1"], max_gateways=1), RolloutStage(name="all")],
    )
    for name, value in changes.items():
        setattr(rollout, name, value)
    return rollout


async def _dead_letters(stack, key: str, count: int, timeout: float = 30.0) -> list[dict[str, str]]:
    consumer = AIOKafkaConsumer("edge.rollouts.v1.dlq", bootstrap_servers=stack.kafka_bootstrap,
                                group_id=f"dlq-{uuid.uuid4()}", auto_offset_reset="earliest")
    await consumer.start()
    found = []
    try:
        async with asyncio.timeout(timeout):
            async for record in consumer:
                if record.key == key.encode():
                    found.append({k: v.decode() for k, v in record.headers})
                    if len(found) == count:
                        return found
    finally:
        await consumer.stop()


async def test_agent_installs_signed_builds_and_refuses_tampered_ones(stack, signed, tmp_path):
    uid, model_name, data, onnx_a, objects, builds = (signed.uid, signed.model_name, signed.data, signed.onnx_a,
                                                      signed.objects, signed.builds)
    fleet = f"fleet-{uid}"
    agent = EdgeAgent(fleet=fleet, gateway_id="gw-1", target="onnxruntime-cpu-int8", objects=objects,
                      trusted_keys=load_trusted_keys([signed.state_dir / DEV_PUBLIC_KEY]), install_dir=tmp_path / "edge")
    frame = data.png[0]
    assert agent.predict(frame).status == PREDICTION_STATUS_MISSING  # nothing installed yet: says so

    bus = Bus(stack.kafka_bootstrap, source=f"test/gateway-{uid}", **FAST)
    agent.subscribe(bus)
    await bus.start()
    try:
        await bus.publish(_rollout(objects, builds["1"], f"other-{uid}"))  # another fleet's: ignored
        await bus.publish(_rollout(objects, builds["1"], fleet))
        async with asyncio.timeout(60):
            while agent.model is None:
                await asyncio.sleep(0.1)
        prediction = agent.predict(frame)
        assert prediction.status == PREDICTION_STATUS_OK and prediction.source == PREDICTION_SOURCE_EDGE
        assert (prediction.model_name, prediction.model_version) == (model_name, "1")
        assert prediction.predicted_class in CLASSES and sum(prediction.scores.values()) == pytest.approx(1, abs=1e-3)
        assert len(prediction.embedding) > 0

        # Capture keeps running through every rollout below: no frame goes without a prediction.
        stop, missing, answered = threading.Event(), [], []

        def capture() -> None:
            while not stop.is_set():
                p = agent.predict(frame)
                (answered if p.status == PREDICTION_STATUS_OK else missing).append(p.model_version)

        capturing = threading.Thread(target=capture, daemon=True)
        capturing.start()
        try:
            # Tampered: someone replaced version 2's model file in the store after it was signed.
            artifact = builds["2"].artifacts[0]
            genuine = objects.get_bytes(artifact.bucket, artifact.key, artifact.sha256)
            objects.put_bytes(artifact.bucket, artifact.key, onnx_a, "application/octet-stream")
            await bus.publish(_rollout(objects, builds["2"], fleet))
            # Forged: a signature that is not the compiler's.
            await bus.publish(_rollout(objects, builds["1"], fleet, signature=bytes(64)))
            refusals = await _dead_letters(stack, fleet, 2)
            assert [h["dlq_reason"] for h in refusals] == ["artifact_sha256_mismatch", "signature_invalid"]
            assert "gw-1" in refusals[0]["dlq_detail"]
            assert agent.model.manifest.version == "1"  # still the signed model it had

            # The genuine version 2, stored again as signed, installs and swaps in under load.
            objects.put_bytes(artifact.bucket, artifact.key, genuine, "application/octet-stream")
            await bus.publish(_rollout(objects, builds["2"], fleet))
            async with asyncio.timeout(60):
                while agent.model.manifest.version != "2":
                    await asyncio.sleep(0.1)
            await asyncio.sleep(0.2)
        finally:
            stop.set()
            capturing.join(10)
        assert missing == [] and {"1", "2"} <= set(answered)
        assert [e.reason for e in agent.refusals] == ["artifact_sha256_mismatch", "signature_invalid"]
    finally:
        await bus.stop()

    # A restarted gateway resumes the installed model after re-checking its hash.
    restarted = EdgeAgent(fleet=fleet, gateway_id="gw-1", target="onnxruntime-cpu-int8", objects=objects,
                          trusted_keys={}, install_dir=tmp_path / "edge")
    assert restarted.restore().manifest.version == "2"


def _public_key(path: Path) -> Path:
    path.write_bytes(public_key_pem(Ed25519PrivateKey.generate().public_key()))
    return path


def test_the_plan_admits_named_pilots_first_then_everyone():
    def plan(*stages: RolloutStage) -> EdgeRollout:
        return EdgeRollout(rollout_id="r-1", stages=list(stages))

    pilot_then_all = plan(RolloutStage(name="pilot", gateway_ids=["gw-1", "gw-2"], max_gateways=2), RolloutStage(name="all"))
    assert [admitting_stage(pilot_then_all, g) for g in ("gw-1", "gw-2", "gw-3")] == [0, 0, 1]
    # max_gateways caps a named stage to the first N names; the others wait for "all".
    capped = plan(RolloutStage(name="pilot", gateway_ids=["gw-1", "gw-2"], max_gateways=1), RolloutStage(name="all"))
    assert [admitting_stage(capped, g) for g in ("gw-1", "gw-2")] == [0, 1]
    # A capped stage without names: a gateway cannot count its fleet, so it never overruns the cap.
    sampled = plan(RolloutStage(name="canary", max_gateways=3), RolloutStage(name="all"))
    assert admitting_stage(sampled, "gw-1") == 1
    assert admitting_stage(plan(RolloutStage(name="pilot", gateway_ids=["gw-1"])), "gw-2") is None
    assert admitting_stage(plan(), "gw-2") == 0  # no plan: everyone at once


async def test_pilots_install_at_once_and_the_rest_after_the_stage_delay(signed, tmp_path):
    delay_s = 3.0
    rollout = _rollout(signed.objects, signed.builds["1"], f"fleet-{signed.uid}")  # pilot: gw-1, then all
    keys = load_trusted_keys([signed.state_dir / DEV_PUBLIC_KEY])

    def agent(gateway_id: str) -> EdgeAgent:
        return EdgeAgent(fleet=rollout.fleet, gateway_id=gateway_id, target=rollout.target, objects=signed.objects,
                         trusted_keys=keys, install_dir=tmp_path / gateway_id, stage_delay_s=delay_s)

    pilot, other = agent("gw-1"), agent("gw-2")
    started = time.monotonic()
    later = asyncio.create_task(other.on_rollout(rollout))
    await pilot.on_rollout(rollout)
    assert pilot.model.manifest.version == "1" and other.model is None  # the pilot soaks first
    await later
    assert time.monotonic() - started >= delay_s and other.model.manifest.version == "1"

    # The delay runs from the rollout's creation: a gateway catching up on an old rollout does not wait again.
    rollout.created_at.FromDatetime(datetime.now(UTC) - timedelta(seconds=delay_s))
    late = agent("gw-3")
    started = time.monotonic()
    await late.on_rollout(rollout)
    assert late.model.manifest.version == "1" and time.monotonic() - started < delay_s

    # Not in the plan at all: skipped, nothing installed.
    del rollout.stages[1:]
    outsider = agent("gw-4")
    await outsider.on_rollout(rollout)
    assert outsider.model is None


async def test_running_agent_trusts_its_configured_keys_and_names_bad_setups(stack, tmp_path, monkeypatch):
    monkeypatch.delenv("LINELOOP_EDGE_TRUSTED_KEYS", raising=False)
    objects = ObjectStore.from_url(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key)

    def agent(fleet: str = "packing-line-gateways", **options):
        # A gateway id per agent: each joins its own consumer group, with no rebalance to wait for.
        return running_agent(fleet=fleet, gateway_id=f"gw-{uuid.uuid4().hex[:6]}", kafka_bootstrap=stack.kafka_bootstrap,
                             objects=objects, state_dir=tmp_path, **options)

    with pytest.raises(AgentSetupError, match="unknown fleet 'nowhere'; configured fleets: packing-line-gateways"):
        async with agent("nowhere"):
            pass
    # Nothing configured: the embedded compiler's development key, which this state dir lacks.
    with pytest.raises(AgentSetupError, match="cannot load its trusted keys: .*compiler/signing-key.pub.pem"):
        async with agent():
            pass

    (tmp_path / "garbage.pem").write_text("not a key")
    (tmp_path / "compiler").mkdir()
    _public_key(tmp_path / DEV_PUBLIC_KEY)
    plant_a, plant_b = _public_key(tmp_path / "plant-a.pem"), _public_key(tmp_path / "plant-b.pem")
    monkeypatch.setenv("LINELOOP_EDGE_TRUSTED_KEYS", f"{plant_a}, {plant_b}")
    assert EdgeSettings().trusted_keys == [plant_a, plant_b]
    # Explicit files win over the setting; the setting wins over the development key.
    with pytest.raises(AgentSetupError, match="garbage.pem is not a PEM public key"):
        async with agent(trusted_key_files=[tmp_path / "garbage.pem"]):
            pass
    async with agent() as configured:
        assert configured.target == "onnxruntime-cpu-int8"
        assert set(configured.trusted_keys) == set(load_trusted_keys([plant_a, plant_b]))
        missing = configured.predict(b"not an image")
        assert (missing.status, missing.missing_reason) == (PREDICTION_STATUS_MISSING, "no model installed on this gateway")


def test_gateway_simulate_takes_trusted_keys_from_the_option_else_the_environment(stack, tmp_path):
    garbage, good = tmp_path / "garbage.pem", _public_key(tmp_path / "plant.pem")
    garbage.write_text("not a key")
    env = {**stack.env(), "LINELOOP_STATE_DIR": str(tmp_path), "LINELOOP_EDGE_TRUSTED_KEYS": str(garbage)}
    command = ["gateway", "simulate", "--line", "line-k", "--frames", "0", "--fleet", "packing-line-gateways",
               "--gateway-id", f"gw-{uuid.uuid4().hex[:6]}", "--json"]

    def run(*options: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, [*command, *options], env=env)
        return result.exit_code, " ".join(result.stderr.split())  # rich wraps long lines

    code, err = run()
    assert code == 2 and f"{garbage} is not a PEM public key" in err, err
    code, err = run("--trusted-key", str(good))
    assert code == 0, err
    code, err = run("--trusted-key", str(tmp_path / "nowhere.pem"))
    assert code == 2 and "does not exist" in err, err
