"""The serving benchmark's baseline: the same ONNX model behind a Flask app, as a team without
Triton would deploy it: under gunicorn, one worker process per core, onnxruntime with one
thread in each (the core budget Triton gets: one model instance per core, one thread each).

POST /predict with the raw FP32 bytes of one [N,3,S,S] batch; answers the probabilities and
the embedding, as raw FP32 bytes one after the other (what Triton answers too).

    gunicorn -w 2 -b 127.0.0.1:PORT --chdir services/compiler/bench 'plain_server:create_app("MODEL.onnx")'
"""

from __future__ import annotations

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
        probabilities, embedding = session.run(["probabilities", "embedding"], {"images": images.reshape(-1, *shape)})
        body = probabilities.astype(np.float32).tobytes() + embedding.astype(np.float32).tobytes()
        return Response(body, mimetype="application/octet-stream")

    return app

