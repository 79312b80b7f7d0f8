"""The edge agent on the real broker and store, with builds signed by the real compiler code.

It installs a signed build from edge.rollouts.v1 and predicts with it; it refuses a rollout
whose artifact was tampered with, or whose signature does not match, dead-letters it with
the reason, and keeps predicting with the model it had, without a gap.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import threading
import uuid
from datetime import timedelta

import pytest
from aiokafka import AIOKafkaConsumer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lineloop.bus import Bus
from lineloop.compiler.builds import BuildEnvironment, run_build
from lineloop.compiler.profiles import Tolerance, load_profiles
from lineloop.compiler.signing import DEV_PUBLIC_KEY, load_signer
from lineloop.compiler.testing import CLASSES, demo_data, register_event, train_demo_model, upload_dataset
from lineloop.edge import load_trusted_keys
from lineloop.edge.agent import EdgeAgent, running_agent
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


async def test_agent_installs_signed_builds_and_refuses_tampered_ones(stack, tmp_path):
    uid = uuid.uuid4().hex[:8]
    fleet, model_name, dataset = f"fleet-{uid}", f"apples-{uid}", f"line-{uid}"
    data, (net_a, net_b) = _models()
    onnx_a, onnx_b = export_onnx(net_a), export_onnx(net_b)
    objects = ObjectStore.from_url(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key)
    upload_dataset(objects, data, dataset, "v0001")
    env = BuildEnvironment(objects, load_signer(None, tmp_path), tmp_path / "compiler", verification_frames=32)
    profile = dataclasses.replace(load_profiles().get("onnxruntime-cpu-int8"), tolerance=Tolerance(0.8, 0.5))
    builds = {}
    for version, net in (("1", net_a), ("2", net_b)):
        event = register_event(objects, net, model_name=model_name, version=version, dataset=dataset,
                               dataset_version="v0001", input_size=data.input_size)
        builds[version] = await asyncio.to_thread(run_build, env, event, profile, f"b-{uid}-{version}")
        assert builds[version].status == BUILD_STATUS_OK, builds[version].reason

    agent = EdgeAgent(fleet=fleet, gateway_id="gw-1", target="onnxruntime-cpu-int8", objects=objects,
                      trusted_keys=load_trusted_keys([tmp_path / DEV_PUBLIC_KEY]), install_dir=tmp_path / "edge")
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


async def test_running_agent_serves_its_fleet_and_names_unknown_fleets(stack, tmp_path):
    objects = ObjectStore.from_url(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key)
    (tmp_path / "compiler").mkdir()
    (tmp_path / "compiler" / "signing-key.pub.pem").write_bytes(public_key_pem(Ed25519PrivateKey.generate().public_key()))
    with pytest.raises(ValueError, match="unknown fleet 'nowhere'; configured fleets: packing-line-gateways"):
        async with running_agent(fleet="nowhere", gateway_id="gw-9", kafka_bootstrap=stack.kafka_bootstrap,
                                 objects=objects, state_dir=tmp_path):
            pass
    async with running_agent(fleet="packing-line-gateways", gateway_id="gw-9", kafka_bootstrap=stack.kafka_bootstrap,
                             objects=objects, state_dir=tmp_path) as agent:
        assert agent.target == "onnxruntime-cpu-int8" and len(agent.trusted_keys) == 1
        missing = agent.predict(b"not an image")
        assert (missing.status, missing.missing_reason) == (PREDICTION_STATUS_MISSING, "no model installed on this gateway")
