"""Triton python-backend model: runs this version's model.onnx with onnxruntime on CPU.

Written into the repository by lineloop.serving; runs inside Triton's python stub. Outputs
are built with Tensor.from_dlpack: with numpy >= 2, pb_utils.Tensor(name, ndarray) returns
an empty tensor.
"""

import json
import os
import sys

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

INPUT = "images"
OUTPUTS = ("probabilities", "embedding")


def _quiet_consumed_capsules(default_hook):
    # The stub marks a consumed DLPack capsule "used_dlpack", not DLPack's "used_dltensor",
    # so numpy's capsule destructor reports a ValueError for every output after the stub
    # already owns the tensor. Drop exactly that report; pass everything else on.
    def hook(unraisable):
        if isinstance(unraisable.exc_value, ValueError) and "PyCapsule_GetPointer" in str(unraisable.exc_value):
            return
        default_hook(unraisable)

    return hook


sys.unraisablehook = _quiet_consumed_capsules(sys.unraisablehook)


def _as_array(tensor):
    # Through DLPack, not tensor.as_numpy(): with numpy >= 2 in the stub, as_numpy() hands
    # back a wrong buffer (every row the same), seen with tritonserver 2.51.
    return np.from_dlpack(tensor)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters.get("intra_op_threads", "1"))
        self.session = ort.InferenceSession(
            os.path.join(version_dir, "model.onnx"), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_shape = tuple(config["input"][0]["dims"])

    def execute(self, requests):
        # Dynamic batching hands several requests at once: run them as one batch, answer each.
        batches, responses = [], [None] * len(requests)
        for index, request in enumerate(requests):
            images = _as_array(pb_utils.get_input_tensor_by_name(request, INPUT))
            if images.ndim != 4 or tuple(images.shape[1:]) != self.input_shape:
                responses[index] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(
                        f"{INPUT} must be [N, {', '.join(map(str, self.input_shape))}], got {list(images.shape)}"
                    )
                )
                continue
            batches.append((index, images.astype(np.float32, copy=False)))
        if batches:
            try:
                results = self.session.run(list(OUTPUTS), {INPUT: np.concatenate([b for _, b in batches])})
            except Exception as err:
                for index, _ in batches:
                    responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"inference failed: {err}"))
                return responses
            start = 0
            for index, images in batches:
                end = start + images.shape[0]
                tensors = [
                    pb_utils.Tensor.from_dlpack(name, np.ascontiguousarray(result[start:end]))
                    for name, result in zip(OUTPUTS, results)
                ]
                responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
                start = end
        return responses

    def finalize(self):
        self.session = None
