"""Evaluate an ONNX model (serving contract) on labelled frames with onnxruntime.

The registry's gate runs this on both the candidate and the production model,
so both are judged by the same runtime on the same inputs (numpy only, no torch).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from lineloop.model.metrics import Evaluation, evaluate


class OnnxClassifier:
    def __init__(self, onnx_bytes: bytes, *, threads: int = 1) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ValueError(f"not a loadable ONNX model: {err}") from err
        inputs = self.session.get_inputs()
        outputs = [o.name for o in self.session.get_outputs()]
        if [i.name for i in inputs] != ["images"] or "probabilities" not in outputs:
            raise ValueError(f"ONNX model does not follow the serving contract (inputs {[i.name for i in inputs]}, outputs {outputs})")
        self.input_size = int(inputs[0].shape[2]) if isinstance(inputs[0].shape[2], int) else None

    def probabilities(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        out = [
            self.session.run(["probabilities"], {"images": np.ascontiguousarray(images[i:i + batch_size], dtype=np.float32)})[0]
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def evaluate_onnx(
    onnx_bytes: bytes, model_classes: list[str], images: np.ndarray, labels: list[str], *, threads: int = 1
) -> Evaluation:
    """Metrics over `images` [N,3,S,S]; labels outside the model's classes count as errors.

    A label the model has no output for cannot be predicted right, so it is kept
    in the confusion matrix (as its own row) rather than dropped.
    """
    probs = OnnxClassifier(onnx_bytes, threads=threads).probabilities(images)
    if probs.shape[1] != len(model_classes):
        raise ValueError(f"model outputs {probs.shape[1]} classes but its card lists {len(model_classes)}")
    classes = sorted(set(model_classes) | set(labels))
    index = {c: i for i, c in enumerate(classes)}
    y_pred = np.array([index[model_classes[j]] for j in probs.argmax(axis=1)], dtype=np.int64)
    y_true = np.array([index[c] for c in labels], dtype=np.int64)
    picked = probs[np.arange(len(labels)), [model_classes.index(c) if c in model_classes else 0 for c in labels]]
    known = np.array([c in model_classes for c in labels])
    loss = float(-np.log(np.clip(picked[known], 1e-7, 1.0)).mean()) if known.any() else float("nan")
    return evaluate(y_true, y_pred, classes, loss=loss)
