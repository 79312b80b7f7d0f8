"""The serving contract every team's model follows.

Input `images` FP32 [N, 3, S, S] (RGB, 0..1); outputs `probabilities` FP32 [N, C] and
`embedding` FP32 [N, E].
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx

INPUT = "images"
PROBABILITIES = "probabilities"
EMBEDDING = "embedding"


class ContractError(ValueError):
    """A model file does not follow the serving contract; the message says where."""


@dataclasses.dataclass(frozen=True)
class Signature:
    input_size: int
    num_classes: int
    embedding_dim: int

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or value <= 0:
                raise ContractError(f"{field.name} must be a positive integer, got {value!r}")


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]


def _check_float(value_info: onnx.ValueInfoProto, where: str) -> None:
    elem = value_info.type.tensor_type.elem_type
    if elem != onnx.TensorProto.FLOAT:
        raise ContractError(f"{where} {value_info.name!r} must be FP32, is {onnx.TensorProto.DataType.Name(elem)}")


def _fixed(dims: list[int | str], index: int, name: str) -> int:
    value = dims[index]
    if not isinstance(value, int) or value <= 0:
        raise ContractError(f"{name} dimension {index} must be fixed, is {value!r}")
    return value


def onnx_signature(model_path: Path) -> Signature:
    """Read and check an ONNX model's inputs and outputs against the contract."""
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as err:
        raise ContractError(f"{model_path} is not a readable ONNX model: {err}") from err
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if [i.name for i in inputs] != [INPUT]:
        raise ContractError(f"model inputs must be exactly [{INPUT!r}], are {[i.name for i in inputs]}")
    outputs = {o.name: o for o in model.graph.output}
    if set(outputs) != {PROBABILITIES, EMBEDDING}:
        raise ContractError(f"model outputs must be {PROBABILITIES!r} and {EMBEDDING!r}, are {sorted(outputs)}")
    image = inputs[0]
    _check_float(image, "input")
    dims = _dims(image)
    if len(dims) != 4 or dims[1] != 3:
        raise ContractError(f"input {INPUT!r} must be [N, 3, S, S], is {dims}")
    size = _fixed(dims, 2, INPUT)
    if _fixed(dims, 3, INPUT) != size:
        raise ContractError(f"input {INPUT!r} must be square, is {dims}")
    widths = {}
    for name, value_info in outputs.items():
        _check_float(value_info, "output")
        out_dims = _dims(value_info)
        if len(out_dims) != 2:
            raise ContractError(f"output {name!r} must be [N, K], is {out_dims}")
        widths[name] = _fixed(out_dims, 1, name)
    return Signature(input_size=size, num_classes=widths[PROBABILITIES], embedding_dim=widths[EMBEDDING])
