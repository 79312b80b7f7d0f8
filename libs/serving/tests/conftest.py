"""A tiny ONNX classifier that follows the serving contract, built with the onnx helper API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

INPUT_SIZE = 16
CLASSES = ("ok", "bruise", "rot", "scab")
EMBEDDING_DIM = 8


def build_classifier(path: Path, input_size: int = INPUT_SIZE, classes: int = len(CLASSES), dim: int = EMBEDDING_DIM,
                     seed: int = 0) -> Path:
    """images -> global average pool -> dense+tanh (embedding) -> dense+softmax (probabilities)."""
    rng = np.random.default_rng(seed)
    weights = [
        numpy_helper.from_array(rng.normal(size=(3, dim)).astype(np.float32), "w_embed"),
        numpy_helper.from_array(rng.normal(size=(dim,)).astype(np.float32), "b_embed"),
        numpy_helper.from_array(rng.normal(size=(dim, classes)).astype(np.float32), "w_class"),
        numpy_helper.from_array(rng.normal(size=(classes,)).astype(np.float32), "b_class"),
    ]
    nodes = [
        helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
        helper.make_node("MatMul", ["features", "w_embed"], ["embed_linear"]),
        helper.make_node("Add", ["embed_linear", "b_embed"], ["embed_biased"]),
        helper.make_node("Tanh", ["embed_biased"], ["embedding"]),
        helper.make_node("MatMul", ["embedding", "w_class"], ["logits_linear"]),
        helper.make_node("Add", ["logits_linear", "b_class"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_apple_classifier",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, input_size, input_size])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", dim]),
        ],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime in use here
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def tiny_onnx(tmp_path: Path) -> Path:
    return build_classifier(tmp_path / "model.onnx")
