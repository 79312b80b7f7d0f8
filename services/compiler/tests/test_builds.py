"""Builds and their verification against the torch model, on a real (small, trained) model.

`run_build` reads the model and frames from S3, so its tests use the stack; the rest need none.
"""

from __future__ import annotations

import functools
import json
import uuid

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from lineloop.compiler.builds import BuildEnvironment, run_build
from lineloop.compiler.onnx_builds import BuildError, fp32_dynamic, int8_static
from lineloop.compiler.profiles import Tolerance, load_profiles
from lineloop.compiler.signing import load_signer
from lineloop.compiler.tensorrt_builds import PlanRunner, build_plan, capability
from lineloop.compiler.testing import demo_data, register_event, train_demo_model, upload_dataset
from lineloop.compiler.verify import OnnxRunner, TorchRunner, verify
from lineloop.contracts.catalogue import bucket
from lineloop.model.export import export_onnx
from lineloop.storage.objects import ObjectNotFound, ObjectStore
from lineloop.v1.events_pb2 import BUILD_STATUS_FAILED, BUILD_STATUS_OK, BUILD_STATUS_REJECTED, ModelRegistered


@functools.cache
def _model():
    data = demo_data(frames=300)
    net = train_demo_model(data, epochs=10)
    return data, net, export_onnx(net)


def _reordered_head(onnx_bytes: bytes) -> bytes:
    """A classic export bug: the classifier head's rows come out in another class order."""
    broken = onnx.load_from_string(onnx_bytes)
    head = next(init for init in broken.graph.initializer if numpy_helper.to_array(init).ndim == 2
                and numpy_helper.to_array(init).shape[0] == 4)
    head.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(head)[::-1].copy(), head.name))
    return broken.SerializeToString()


def test_default_profiles_are_valid_configuration():
    catalogue = load_profiles()
    assert catalogue.cloud_targets == ("triton-onnx",)
    int8 = catalogue.get("onnxruntime-cpu-int8")
    assert (int8.runtime, int8.precision, int8.calibration_frames > 0) == ("onnxruntime-cpu", "int8", True)
    trt = catalogue.get("tensorrt-int8-sm87-trt10.3")
    assert (trt.gpu_arch, trt.tensorrt_version, trt.artifact_name) == ("sm_87", "10.3", "model.plan")
    with pytest.raises(KeyError, match="unknown target profile 'nope'"):
        catalogue.get("nope")


def test_profile_file_errors_name_the_profile(tmp_path):
    path = tmp_path / "profiles.yaml"
    path.write_text("profiles:\n  edge-trt:\n    runtime: tensorrt\n    precision: fp16\n"
                    "    tolerance: {min_top1_agreement: 1, max_abs_error: 0.1}\n")
    with pytest.raises(ValueError, match="edge-trt.*gpu_arch and tensorrt_version"):
        load_profiles(path)


def test_fp32_build_has_a_dynamic_batch_and_matches_the_torch_model():
    data, net, source = _model()
    built = fp32_dynamic(source)
    batch_dim = onnx.load_from_string(built).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch"
    held_out, _ = data.split("test")
    result = verify(TorchRunner(net), OnnxRunner(built), held_out, load_profiles().get("triton-onnx").tolerance, 8,
                    single_runs=20, batch_runs=5)
    assert result.passed, result.failures
    assert result.top1_agreement == 1.0 and result.max_abs_error <= 1e-5  # two runtimes: float rounding only
    assert result.latency_p99_ms >= result.latency_p50_ms > 0 and result.throughput_per_s > 0


def test_int8_build_is_quantised_and_verified_against_the_torch_model():
    data, net, source = _model()
    calibration, _ = data.split("train")
    built = int8_static(source, calibration[:64])
    ops = {node.op_type for node in onnx.load_from_string(built).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    held_out, _ = data.split("test")
    result = verify(TorchRunner(net), OnnxRunner(built), held_out, Tolerance(0.9, 0.3), 1,
                    single_runs=20, batch_runs=5)
    assert result.passed, result.failures
    assert 0 < result.max_abs_error <= 0.3  # quantised: close, not identical


def test_broken_export_is_rejected_against_the_torch_model_with_the_numbers(stack, tmp_path):
    uid = uuid.uuid4().hex[:8]
    model_name, dataset = f"apples-{uid}", f"line-{uid}"
    data, net, source = _model()
    objects = ObjectStore.from_url(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key)
    # Labeling configured with another datasets bucket (LINELOOP_LABELING_DATASETS_BUCKET): the build
    # reads the manifest where the event says, not from the catalogue's datasets bucket.
    moved = f"{bucket('datasets')}-moved"
    objects.ensure_buckets([moved])
    manifest = upload_dataset(objects, data, dataset, "v0001", datasets_bucket=moved)
    assert manifest.bucket == moved
    env = BuildEnvironment(objects, load_signer(None, tmp_path), tmp_path / "compiler", verification_frames=40)
    profile = load_profiles().get("triton-onnx")

    def register(version: str, onnx_bytes: bytes | None = None):
        return register_event(objects, net, model_name=model_name, version=version, dataset=dataset,
                              dataset_version="v0001", dataset_manifest=manifest, input_size=data.input_size,
                              onnx_bytes=onnx_bytes)

    good_event = register("v0001")
    good = run_build(env, good_event, profile, f"b-{uid}-good")
    assert good.status == BUILD_STATUS_OK, good.reason
    assert good.verification.top1_agreement == 1.0 and good.verification.max_abs_error <= 1e-4

    # Checked against its own (broken) export this build would agree exactly; against torch it cannot.
    broken = run_build(env, register("v0002", _reordered_head(source)), profile, f"b-{uid}-broken")
    report = broken.verification
    assert broken.status == BUILD_STATUS_REJECTED and not broken.signature
    assert report.samples == 40 and report.top1_agreement < 1.0 and report.max_abs_error > 1e-4
    assert "top-1 agreement" in broken.reason and "max abs score difference" in broken.reason
    numbers = json.loads(objects.get_bytes("lineloop-builds", f"{model_name}/v0002/triton-onnx/verification.json"))
    assert numbers["passed"] is False
    assert numbers["max_abs_error"] == pytest.approx(report.max_abs_error)
    with pytest.raises(ObjectNotFound):
        objects.get_bytes("lineloop-builds", f"{model_name}/v0002/triton-onnx/manifest.json")

    # Without the torch weights there is nothing to verify against: the build fails, it does not pass.
    objects.delete(good_event.weights.bucket, good_event.weights.key)
    unverifiable = run_build(env, good_event, profile, f"b-{uid}-again")
    assert unverifiable.status == BUILD_STATUS_FAILED and "weights.pt" in unverifiable.reason

    # An event without the locations (from before events carried them) fails with the reason, never a guessed key.
    unlocated = ModelRegistered()
    unlocated.CopyFrom(good_event)
    unlocated.ClearField("dataset_manifest")
    failed = run_build(env, unlocated, profile, f"b-{uid}-unlocated")
    assert failed.status == BUILD_STATUS_FAILED and failed.reason == "the registered model carries no dataset manifest reference"


def test_a_model_outside_the_serving_contract_is_refused():
    _, _, source = _model()
    model = onnx.load_from_string(source)
    model.graph.output[1].name = "features"
    with pytest.raises(BuildError, match="serving contract"):
        fp32_dynamic(model.SerializeToString())


def test_tensorrt_capability_is_reported_never_faked():
    import torch

    check = capability(load_profiles().get("tensorrt-int8-sm87-trt10.3"))
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        assert check.gpu_arch == f"sm_{major}{minor}"  # the driver's answer agrees with CUDA's
    else:
        assert not check.available and check.reason.startswith("unavailable: no CUDA device (")


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_tensorrt_plan_matches_the_torch_model_on_this_gpu(precision, tmp_path):
    import dataclasses

    import torch

    # A CUDA host may still lack TensorRT (it comes with the GPU worker's image, not pip): skip, not error.
    trt = pytest.importorskip("tensorrt", reason="TensorRT not installed")

    major, minor = torch.cuda.get_device_capability()
    base = load_profiles().get(f"tensorrt-{precision}-sm87-trt10.3")
    profile = dataclasses.replace(base, gpu_arch=f"sm_{major}{minor}", tensorrt_version=".".join(trt.__version__.split(".")[:2]))
    assert capability(profile).available
    data, net, source = _model()
    calibration, _ = data.split("train")
    plan = build_plan(fp32_dynamic(source), profile, data.input_size, calibration if precision == "int8" else None,
                      tmp_path / "timing.cache")
    assert (tmp_path / "timing.cache").stat().st_size > 0
    held_out, _ = data.split("test")
    result = verify(TorchRunner(net), PlanRunner(plan), held_out, profile.tolerance, profile.batch_size)
    assert result.passed, result.failures
    assert np.isfinite(result.max_abs_error)
