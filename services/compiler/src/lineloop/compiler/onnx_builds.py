"""ONNX builds: fp32 with a dynamic batch axis (Triton), static INT8 (onnxruntime on CPU)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from lineloop.serving import INPUT, ContractError, onnx_signature

BATCH_AXIS = "batch"


class BuildError(Exception):
    """The source model cannot be turned into this target."""


def fp32_dynamic(source: bytes) -> bytes:
    """The source model with a symbolic batch axis on its input and outputs, checked against the contract."""
    model = _checked(source)
    for value_info in [*model.graph.input, *model.graph.output]:
        dims = value_info.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = BATCH_AXIS
    onnx.checker.check_model(model)
    return model.SerializeToString()


class _FramesReader(CalibrationDataReader):
    """Feeds calibration frames one small batch at a time."""

    def __init__(self, frames: np.ndarray, batch_size: int = 8) -> None:
        self._batches = iter([frames[i:i + batch_size] for i in range(0, len(frames), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT: np.ascontiguousarray(batch, dtype=np.float32)}


def int8_static(source: bytes, calibration: np.ndarray) -> bytes:
    """Static INT8 (QDQ, per-channel weights), activation ranges calibrated on `calibration` [N,3,S,S].

    Activations are unsigned and weights signed (U8S8): the layout onnxruntime's x86 and ARM
    kernels run fastest. The model is pre-processed (shape inference, graph optimisation) first,
    as onnxruntime's quantisation guide asks.
    """
    if calibration.ndim != 4 or len(calibration) == 0:
        raise BuildError(f"INT8 calibration needs frames [N,3,S,S], got shape {calibration.shape}")
    fp32 = fp32_dynamic(source)
    with tempfile.TemporaryDirectory(prefix="lineloop-int8-") as tmp:
        folder = Path(tmp)
        (folder / "fp32.onnx").write_bytes(fp32)
        quant_pre_process(str(folder / "fp32.onnx"), str(folder / "prepared.onnx"), skip_symbolic_shape=True)
        prepared = onnx.load(str(folder / "prepared.onnx"))
        # Scores stay fp32: a quantised softmax would round every probability to 1/255.
        softmax = [node.name for node in prepared.graph.node if node.op_type == "Softmax"]
        quantize_static(
            str(folder / "prepared.onnx"),
            str(folder / "int8.onnx"),
            _FramesReader(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=softmax,
        )
        return (folder / "int8.onnx").read_bytes()


def _checked(source: bytes) -> onnx.ModelProto:
    with tempfile.NamedTemporaryFile(suffix=".onnx") as tmp:
        tmp.write(source)
        tmp.flush()
        try:
            onnx_signature(Path(tmp.name))
        except ContractError as err:
            raise BuildError(f"source model breaks the serving contract: {err}") from err
    return onnx.load_from_string(source)
