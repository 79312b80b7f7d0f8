"""Repository entries: contract checks on the model file, config.pbtxt per flavour."""

from pathlib import Path

import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper
from tritonclient.grpc import model_config_pb2 as mc

from lineloop.serving import (
    ContractError,
    Flavour,
    LocalRepository,
    S3Repository,
    ServingOptions,
    Signature,
    onnx_signature,
    open_repository,
    write_model_version,
)

from .conftest import CLASSES, EMBEDDING_DIM, INPUT_SIZE, build_classifier


def read_config(model_dir) -> mc.ModelConfig:
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())


def test_signature_is_read_from_the_onnx_file(tiny_onnx):
    assert onnx_signature(tiny_onnx) == Signature(INPUT_SIZE, len(CLASSES), EMBEDDING_DIM)


def test_python_flavour_entry(tmp_path, tiny_onnx):
    model_dir = write_model_version(
        tmp_path / "repo", "apples", 3, tiny_onnx, labels=CLASSES,
        options=ServingOptions(max_batch_size=16, instance_count=2, max_queue_delay_us=500),
    )
    assert sorted(p.name for p in (model_dir / "3").iterdir()) == ["model.onnx", "model.py"]
    assert (model_dir / "labels.txt").read_text().splitlines() == list(CLASSES)
    config = read_config(model_dir)
    assert config.backend == "python" and config.platform == ""
    assert config.max_batch_size == 16
    assert list(config.input[0].dims) == [3, INPUT_SIZE, INPUT_SIZE]
    assert {o.name: list(o.dims) for o in config.output} == {"probabilities": [4], "embedding": [EMBEDDING_DIM]}
    assert config.output[0].label_filename == "labels.txt"
    assert config.instance_group[0].count == 2 and config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert config.version_policy.latest.num_versions == 1


@pytest.mark.parametrize("flavour, filename", [(Flavour.ONNXRUNTIME, "model.onnx"), (Flavour.TENSORRT, "model.plan")])
def test_gpu_flavours(tmp_path, tiny_onnx, flavour, filename):
    signature = Signature(INPUT_SIZE, len(CLASSES), EMBEDDING_DIM)
    model_dir = write_model_version(
        tmp_path / "repo", "apples", 1, tiny_onnx, flavour=flavour, signature=signature,
        options=ServingOptions(versions=[1, 2]),
    )
    assert [p.name for p in (model_dir / "1").iterdir()] == [filename]
    config = read_config(model_dir)
    assert config.platform == flavour.value and config.backend == ""
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert list(config.version_policy.specific.versions) == [1, 2]


def test_tensorrt_plan_needs_a_signature(tmp_path, tiny_onnx):
    with pytest.raises(ContractError, match="TensorRT plan needs its signature"):
        write_model_version(tmp_path, "apples", 1, tiny_onnx, flavour="tensorrt_plan")


def test_wrong_label_count_is_refused_and_nothing_written(tmp_path, tiny_onnx):
    with pytest.raises(ContractError, match="3 class labels for 4 probabilities"):
        write_model_version(tmp_path, "apples", 1, tiny_onnx, labels=CLASSES[:3])
    assert not (tmp_path / "apples").exists()


def test_rewriting_a_version_replaces_it_whole(tmp_path):
    first = build_classifier(tmp_path / "a.onnx", seed=1)
    second = build_classifier(tmp_path / "b.onnx", seed=2)
    model_dir = write_model_version(tmp_path / "repo", "apples", 1, first)
    write_model_version(tmp_path / "repo", "apples", 1, second)
    assert (model_dir / "1" / "model.onnx").read_bytes() == second.read_bytes()
    assert [p.name for p in model_dir.iterdir() if p.name.startswith(".")] == []


def _model(tmp_path, inputs, outputs):
    nodes = [helper.make_node("Identity", [inputs[0].name], [o.name]) for o in outputs]
    model = helper.make_model(helper.make_graph(nodes, "bad", inputs, outputs))
    path = tmp_path / "bad.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize(
    "inputs, outputs, message",
    [
        (
            [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 3, 8, 8])],
            [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2]),
             helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 2])],
            "model inputs must be exactly \\['images'\\]",
        ),
        (
            [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 8, 8])],
            [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 2])],
            "model outputs must be 'probabilities' and 'embedding'",
        ),
        (
            [helper.make_tensor_value_info("images", TensorProto.FLOAT16, ["N", 3, 8, 8])],
            [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2]),
             helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 2])],
            "must be FP32, is FLOAT16",
        ),
        (
            [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 8, 9])],
            [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2]),
             helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 2])],
            "must be square",
        ),
        (
            [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, "S", "S"])],
            [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2]),
             helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 2])],
            "dimension 2 must be fixed",
        ),
    ],
)
def test_contract_violations_name_the_problem(tmp_path, inputs, outputs, message):
    with pytest.raises(ContractError, match=message):
        write_model_version(tmp_path / "repo", "bad", 1, _model(tmp_path, inputs, outputs))
    assert not (tmp_path / "repo" / "bad" / "1").exists()


def test_not_an_onnx_file(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ContractError, match="not a readable ONNX model"):
        onnx_signature(junk)


def test_open_repository_forms(tmp_path):
    s3 = open_repository("s3://http://127.0.0.1:8333/lineloop-triton/cloud", "key", "secret")
    assert isinstance(s3, S3Repository)
    assert (s3.bucket, s3.prefix, s3.url) == ("lineloop-triton", "cloud", "s3://http://127.0.0.1:8333/lineloop-triton/cloud")
    assert isinstance(open_repository(tmp_path), LocalRepository)
    with pytest.raises(ValueError, match="mangled by a Path"):
        open_repository(Path("s3://http://127.0.0.1:8333/lineloop-triton"))
    with pytest.raises(ValueError, match="names no bucket"):
        open_repository("s3://http://127.0.0.1:8333/")
