"""Triton serving for lineloop models: repository entries and model control.

The contract every model follows: input `images` FP32 [N, 3, S, S] (RGB, 0..1), outputs
`probabilities` FP32 [N, C] and `embedding` FP32 [N, E].
"""

from lineloop.serving.contract import EMBEDDING, INPUT, PROBABILITIES, ContractError, Signature, onnx_signature
from lineloop.serving.control import Prediction, ServingError, TritonControl
from lineloop.serving.repository import (
    Flavour,
    LocalRepository,
    ModelRepository,
    S3Repository,
    ServingOptions,
    model_config,
    open_repository,
    write_model_version,
)

__all__ = [
    "EMBEDDING",
    "INPUT",
    "PROBABILITIES",
    "ContractError",
    "Flavour",
    "LocalRepository",
    "ModelRepository",
    "Prediction",
    "S3Repository",
    "ServingError",
    "ServingOptions",
    "Signature",
    "TritonControl",
    "model_config",
    "onnx_signature",
    "open_repository",
    "write_model_version",
]
