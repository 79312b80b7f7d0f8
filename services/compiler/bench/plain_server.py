"""The benchmark's baseline: a plain Flask server answering one request at a time.

POST /predict with the raw FP32 bytes of one [N,3,S,S] batch; answers the probabilities as
JSON. One process, one thread (werkzeug `threaded=False`), onnxruntime with one thread,
the same ONNX file Triton serves.

    python plain_server.py MODEL.onnx PORT
"""

from __future__ import annotations

import logging
import sys

import numpy as np
import onnxruntime as ort
from flask import Flask, Response, request


def create_app(model_path: str) -> Flask:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"])
    shape = [int(d) for d in session.get_inputs()[0].shape[1:]]
    app = Flask("plain-onnx")

    @app.post("/predict")
    def predict() -> Response:
        images = np.frombuffer(request.get_data(), dtype=np.float32)
        if images.size % int(np.prod(shape)):
            return Response(f"body must be FP32 [N,{','.join(map(str, shape))}]", status=400)
        probabilities = session.run(["probabilities"], {"images": images.reshape(-1, *shape)})[0]
        return Response(probabilities.astype(np.float32).tobytes(), mimetype="application/octet-stream")

    return app


if __name__ == "__main__":
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    create_app(sys.argv[1]).run(host="127.0.0.1", port=int(sys.argv[2]), threaded=False, processes=1)
