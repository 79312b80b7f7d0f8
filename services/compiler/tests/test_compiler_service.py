"""The compiler on the real stack: a gated version becomes verified, signed builds on models.compiled.v1."""

from __future__ import annotations

import asyncio
import functools
import json
import sys
import uuid

import grpc
import pytest
from aiokafka import AIOKafkaConsumer

from lineloop.bus import Bus
from lineloop.compiler.main import build_service
from lineloop.compiler.profiles import load_profiles
from lineloop.compiler.settings import CompilerSettings
from lineloop.compiler.signing import DEV_PUBLIC_KEY
from lineloop.compiler.tensorrt_builds import capability
from lineloop.compiler.testing import demo_data, register_event, train_demo_model, upload_dataset
from lineloop.edge.manifest import BuildManifest, load_trusted_keys, sha256_hex, verify_manifest
from lineloop.runtime import StackSettings, error_info
from lineloop.storage.objects import ObjectNotFound, ObjectStore
from lineloop.v1 import compiler_pb2, compiler_pb2_grpc
from lineloop.v1.events_pb2 import (
    BUILD_STATUS_OK,
    BUILD_STATUS_REJECTED,
    BUILD_STATUS_UNAVAILABLE,
    ModelCompiled,
    ModelRegistered,
)

FAST = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}

PROFILES = """
cloud_targets: [triton-onnx]
profiles:
  triton-onnx:
    runtime: onnxruntime
    precision: fp32
    batch_size: 8
    tolerance: {min_top1_agreement: 1.0, max_abs_error: 1.0e-4}
  onnxruntime-cpu-int8:
    runtime: onnxruntime-cpu
    precision: int8
    calibration_frames: 64
    tolerance: {min_top1_agreement: 0.9, max_abs_error: 0.3}
  # No INT8 model can meet this: verification must reject it with the numbers.
  int8-strict:
    runtime: onnxruntime-cpu
    precision: int8
    calibration_frames: 64
    tolerance: {min_top1_agreement: 1.0, max_abs_error: 1.0e-6}
  tensorrt-fp16-sm87-trt10.3:
    runtime: tensorrt
    precision: fp16
    gpu_arch: sm_87
    tensorrt_version: "10.3"
    tolerance: {min_top1_agreement: 0.99, max_abs_error: 0.02}
"""


@functools.cache
def _demo():
    data = demo_data(frames=300)
    return data, train_demo_model(data, epochs=10)


def settings_for(stack, tmp_path) -> CompilerSettings:
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(PROFILES)
    return CompilerSettings(
        grpc_port=0, metrics_port=None, database_url=f"sqlite:///{tmp_path / 'compiler.db'}",
        profiles_file=profiles, verification_frames=60, poll_interval_s=0.5,
        kafka_session_timeout_ms=FAST["session_timeout_ms"], kafka_heartbeat_interval_ms=FAST["heartbeat_interval_ms"],
        stack=StackSettings(
            kafka_bootstrap=stack.kafka_bootstrap, s3_endpoint=stack.s3_endpoint, s3_access_key=stack.s3_access_key,
            s3_secret_key=stack.s3_secret_key, state_dir=tmp_path, log_format="console",
        ),
    )


async def _cli(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lineloop.cli.main", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def _dead_letter(stack, topic: str, key: str, timeout: float = 30.0):
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=stack.kafka_bootstrap, group_id=f"dlq-{uuid.uuid4()}",
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        async with asyncio.timeout(timeout):
            async for record in consumer:
                if record.key == key.encode():
                    return {k: v.decode() for k, v in record.headers}
    finally:
        await consumer.stop()


async def test_gated_version_is_compiled_verified_signed_and_published(stack, tmp_path):
    uid = uuid.uuid4().hex[:8]
    model_name, dataset = f"apples-{uid}", f"line-{uid}"
    data, net = _demo()
    objects = ObjectStore.from_url(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key)
    manifest = upload_dataset(objects, data, dataset, "v0001")
    gated = register_event(objects, net, model_name=model_name, version="v0001", dataset=dataset,
                           dataset_version="v0001", dataset_manifest=manifest, input_size=data.input_size)
    not_gated = register_event(objects, net, model_name=model_name, version="v0002", dataset=dataset,
                               dataset_version="v0001", dataset_manifest=manifest, input_size=data.input_size, passed=False)
    broken = ModelRegistered(model_name=f"broken-{uid}", version="v0001", gate=gated.gate)

    compiled: asyncio.Queue[ModelCompiled] = asyncio.Queue()
    observer = Bus(stack.kafka_bootstrap, source="test/observer", **FAST)

    @observer.handler(ModelCompiled, group=f"observer-{uid}")
    async def on_compiled(msg: ModelCompiled, ctx) -> None:
        if msg.model_name == model_name:
            await compiled.put(msg)

    settings = settings_for(stack, tmp_path)
    # The Jetson profile, which this host cannot build: its reason is the capability check's, whatever the host.
    trt_check = capability(load_profiles(settings.profiles_file).get("tensorrt-fp16-sm87-trt10.3"))
    assert not trt_check.available, "this test expects a host that cannot build the Jetson (sm_87) profile"
    service = build_service(settings)
    await observer.start()
    try:
        async with service.running():
            for event in (not_gated, broken, gated):
                await observer.publish(event)
            async with asyncio.timeout(120):
                builds = {b.target: b for b in [await compiled.get(), await compiled.get()]}
            # The cloud target and the default fleet's target; the version that failed the gate is never built.
            assert set(builds) == {"triton-onnx", "onnxruntime-cpu-int8"}
            trusted = load_trusted_keys([tmp_path / DEV_PUBLIC_KEY])
            for target, build in builds.items():
                assert build.status == BUILD_STATUS_OK, build.reason
                assert build.version == "v0001"
                report = build.verification
                assert report.samples == 60 and report.top1_agreement >= 0.9
                assert report.latency_p99_ms >= report.latency_p50_ms > 0 and report.throughput_per_s > 0
                manifest_bytes = objects.get_bytes(build.manifest.bucket, build.manifest.key)
                assert build.manifest.key == f"{model_name}/v0001/{target}/manifest.json"
                manifest = verify_manifest(manifest_bytes, build.signature, build.key_id, trusted, build.manifest.sha256)
                assert (manifest.model_name, manifest.target, manifest.source["dataset_version"]) == (model_name, target, "v0001")
                assert manifest.source["onnx"]["sha256"] == gated.onnx.sha256
                assert manifest.source["weights"]["key"] == gated.weights.key  # where the event said
                (artifact,) = manifest.artifacts
                assert sha256_hex(objects.get_bytes(artifact.bucket, artifact.key)) == artifact.sha256
                assert [a.sha256 for a in build.artifacts] == [artifact.sha256]
            assert builds["triton-onnx"].verification.max_abs_error <= 1e-4

            async with grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
                stub = compiler_pb2_grpc.CompilerServiceStub(channel)
                listed = await stub.ListBuilds(compiler_pb2.ListBuildsRequest(model_name=model_name))
                assert {b.target for b in listed.builds} == set(builds)
                one = builds["triton-onnx"]
                assert await stub.GetBuild(compiler_pb2.GetBuildRequest(build_id=one.build_id)) == one

                reply = await stub.Compile(compiler_pb2.CompileRequest(
                    model_name=model_name, version="v0001",
                    targets=["triton-onnx", "int8-strict", "tensorrt-fp16-sm87-trt10.3"]), timeout=120)
                by_target = {b.target: b for b in reply.builds}
                assert by_target["triton-onnx"] == one  # already built: not rebuilt
                strict = by_target["int8-strict"]
                assert strict.status == BUILD_STATUS_REJECTED
                assert "max abs score difference" in strict.reason and "> 1e-06" in strict.reason
                assert strict.verification.max_abs_error > 1e-6 and not strict.signature
                with pytest.raises(ObjectNotFound):
                    objects.get_bytes("lineloop-builds", f"{model_name}/v0001/int8-strict/manifest.json")
                numbers = json.loads(objects.get_bytes("lineloop-builds", f"{model_name}/v0001/int8-strict/verification.json"))
                assert numbers["passed"] is False and numbers["max_abs_error"] == pytest.approx(strict.verification.max_abs_error)
                trt = by_target["tensorrt-fp16-sm87-trt10.3"]
                assert (trt.status, trt.reason) == (BUILD_STATUS_UNAVAILABLE, trt_check.reason)

                for request, code, reason in [
                    (compiler_pb2.CompileRequest(model_name=model_name, version="v0001", targets=["gpu-magic"]),
                     grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_TARGET"),
                    (compiler_pb2.CompileRequest(model_name=model_name, version="v0002"),
                     grpc.StatusCode.NOT_FOUND, "VERSION_NOT_REGISTERED"),
                ]:
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await stub.Compile(request, timeout=30)
                    assert err.value.code() == code and error_info(err.value).reason == reason
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.GetBuild(compiler_pb2.GetBuildRequest(build_id="b-nope"))
                assert err.value.code() == grpc.StatusCode.NOT_FOUND

            # `lineloop builds` (a separate process: the service runs on this event loop).
            listed_json = json.loads(await _cli("builds", "list", "--model", model_name, "--json",
                                                "--target", f"127.0.0.1:{service.grpc_port}"))
            assert {b["target"]: b["status"] for b in listed_json} == {
                "triton-onnx": "BUILD_STATUS_OK", "onnxruntime-cpu-int8": "BUILD_STATUS_OK",
                "int8-strict": "BUILD_STATUS_REJECTED", "tensorrt-fp16-sm87-trt10.3": "BUILD_STATUS_UNAVAILABLE",
            }
            trt_id = next(b["build_id"] for b in listed_json if b["target"].startswith("tensorrt"))
            shown = json.loads(await _cli("builds", "show", trt_id, "--json", "--target", f"127.0.0.1:{service.grpc_port}"))
            assert (shown["status"], shown["reason"]) == ("BUILD_STATUS_UNAVAILABLE", trt_check.reason)

            headers = await _dead_letter(stack, "models.registered.v1.dlq", broken.model_name)
            assert headers["dlq_reason"] == "invalid_model_registered"
            assert "onnx artifact reference is missing" in headers["dlq_detail"]
            # A rejection is published too (with its numbers); an unavailable target is not: nothing was built.
            async with asyncio.timeout(30):
                published = await compiled.get()
            assert (published.target, published.status) == ("int8-strict", BUILD_STATUS_REJECTED)
            assert compiled.empty()
    finally:
        await observer.stop()
    manifest = BuildManifest.from_bytes(objects.get_bytes("lineloop-builds", f"{model_name}/v0001/triton-onnx/manifest.json"))
    assert manifest.classes == ("bruise", "ok", "rot", "scab")
