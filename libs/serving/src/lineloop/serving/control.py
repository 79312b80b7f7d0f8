"""Load, unload and check models on a Triton in explicit model-control mode (gRPC)."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from lineloop.serving.contract import EMBEDDING, INPUT, PROBABILITIES


class ServingError(RuntimeError):
    """Triton refused or failed an operation; the message carries Triton's reason."""


@dataclasses.dataclass(frozen=True)
class Prediction:
    probabilities: np.ndarray  # [N, C]
    embedding: np.ndarray  # [N, E]


class TritonControl:
    def __init__(self, grpc_address: str, timeout: float = 30.0) -> None:
        self.address = grpc_address
        self.timeout = timeout
        self.client = grpcclient.InferenceServerClient(url=grpc_address)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> TritonControl:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def server_ready(self) -> bool:
        try:
            return self.client.is_server_ready(client_timeout=self.timeout)
        except InferenceServerException:
            return False

    def load(self, triton_model: str) -> None:
        """(Re)load a model from the repository: its config and the versions it names.

        Triton re-reads the model's folder, so a new version written since the last load is
        picked up; rewriting an existing version's files in place is not (use a new version).
        """
        try:
            self.client.load_model(triton_model, client_timeout=self.timeout)
        except InferenceServerException as err:
            raise ServingError(f"Triton could not load {triton_model!r}: {err.message()}") from err

    def unload(self, triton_model: str) -> None:
        try:
            self.client.unload_model(triton_model, client_timeout=self.timeout)
        except InferenceServerException as err:
            raise ServingError(f"Triton could not unload {triton_model!r}: {err.message()}") from err

    def ready_versions(self, triton_model: str) -> list[int]:
        """Versions of the model Triton serves now, ascending."""
        try:
            index = self.client.get_model_repository_index(client_timeout=self.timeout)
        except InferenceServerException as err:
            raise ServingError(f"Triton repository index failed: {err.message()}") from err
        return sorted(
            int(entry.version)
            for entry in index.models
            if entry.name == triton_model and entry.state == "READY" and entry.version
        )

    def wait_ready(self, triton_model: str, version: int, timeout: float = 60.0) -> float:
        """Wait until `version` of the model answers as ready; returns the seconds waited."""
        start = time.monotonic()
        while True:
            try:
                if self.client.is_model_ready(triton_model, str(version), client_timeout=self.timeout):
                    return time.monotonic() - start
            except InferenceServerException:
                pass
            if time.monotonic() - start > timeout:
                raise ServingError(
                    f"{triton_model!r} version {version} not ready after {timeout:.0f} s "
                    f"(ready versions: {self.ready_versions(triton_model)})"
                )
            time.sleep(0.05)

    def infer(self, triton_model: str, images: np.ndarray, version: int | None = None) -> Prediction:
        """Score a batch [N, 3, S, S] of FP32 images on one model version (newest when None)."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        request = grpcclient.InferInput(INPUT, list(images.shape), "FP32")
        request.set_data_from_numpy(images)
        outputs = [grpcclient.InferRequestedOutput(PROBABILITIES), grpcclient.InferRequestedOutput(EMBEDDING)]
        try:
            result = self.client.infer(
                triton_model,
                [request],
                model_version="" if version is None else str(version),
                outputs=outputs,
                client_timeout=self.timeout,
            )
        except InferenceServerException as err:
            raise ServingError(f"inference on {triton_model!r} failed: {err.message()}") from err
        return Prediction(probabilities=result.as_numpy(PROBABILITIES), embedding=result.as_numpy(EMBEDDING))

    def smoke(self, triton_model: str, version: int, batch: int = 2) -> Prediction:
        """One inference on random images; checks shapes and that probabilities are probabilities."""
        metadata = self.client.get_model_metadata(triton_model, str(version), client_timeout=self.timeout)
        dims = [int(d) for d in next(i for i in metadata.inputs if i.name == INPUT).shape]
        images = np.random.default_rng(0).random((batch, *dims[1:]), dtype=np.float32)
        prediction = self.infer(triton_model, images, version)
        probabilities, embedding = prediction.probabilities, prediction.embedding
        if probabilities.ndim != 2 or probabilities.shape[0] != batch:
            raise ServingError(f"smoke test: probabilities shape {probabilities.shape}, expected [{batch}, C]")
        if embedding.ndim != 2 or embedding.shape[0] != batch:
            raise ServingError(f"smoke test: embedding shape {embedding.shape}, expected [{batch}, E]")
        if not (np.isfinite(probabilities).all() and np.isfinite(embedding).all()):
            raise ServingError("smoke test: non-finite outputs")
        if not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3):
            raise ServingError(f"smoke test: probabilities do not sum to 1: {probabilities.sum(axis=1)}")
        if batch > 1 and np.all(embedding == embedding[0]):
            # What a backend that misreads its input buffer looks like (see templates/model.py).
            raise ServingError("smoke test: different images got identical embeddings; the input is not reaching the model")
        return prediction
