"""ONNX export under the serving contract every team uses.

Input `images` FP32 [N,3,S,S] (RGB 0..1); outputs `probabilities` FP32 [N,C]
(softmax inside the graph, so every runtime returns the same scores) and
`embedding` FP32 [N,E]; batch axis dynamic; opset 17; TorchScript exporter
(`dynamo=False`), which gives a plain graph TensorRT and onnxruntime both take.
"""

from __future__ import annotations

import io
import warnings

import torch
from torch import nn

from lineloop.model.net import InspectionNet

OPSET = 17
INPUT = "images"
PROBABILITIES = "probabilities"
EMBEDDING = "embedding"


class Serving(nn.Module):
    """The model under the serving contract (softmax scores, embedding): what is exported, and the reference."""

    def __init__(self, model: InspectionNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, embedding = self.model(images)
        return torch.softmax(logits, dim=1), embedding


def export_onnx(model: InspectionNet) -> bytes:
    """The model as ONNX bytes (eval mode, CPU copy; the caller's model is not changed)."""
    serving = Serving(_cpu_copy(model)).eval()
    size = model.spec.input_size
    example = torch.zeros(1, 3, size, size, dtype=torch.float32)
    buf = io.BytesIO()
    # The TorchScript exporter is chosen on purpose (see above); its deprecation notice is noise here.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            serving,
            (example,),
            buf,
            input_names=[INPUT],
            output_names=[PROBABILITIES, EMBEDDING],
            dynamic_axes={INPUT: {0: "batch"}, PROBABILITIES: {0: "batch"}, EMBEDDING: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    return buf.getvalue()


def _cpu_copy(model: InspectionNet) -> InspectionNet:
    copy = InspectionNet(model.spec)
    copy.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    return copy
