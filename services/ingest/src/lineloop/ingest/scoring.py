"""Cloud scoring through Triton: routing per line, batching concurrent frames.

Every frame of a line goes to the line's production version, or to its canary
for the canary's share of frames (decided from the frame id, so a retried frame
is routed the same way). Frames that arrive together are sent as one request.
Whatever goes wrong, `score` answers: a prediction, or one marked missing with why.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable

import numpy as np
import tritonclient.grpc.aio as triton
from opentelemetry import metrics
from PIL import Image
from tritonclient.utils import InferenceServerException

from lineloop.ingest.state import Deployment, load_deployments
from lineloop.vision import to_model_input
from lineloop.v1.common_pb2 import Prediction, PredictionSource, PredictionStatus

log = logging.getLogger(__name__)
_meter = metrics.get_meter("lineloop.ingest")
batch_sizes = _meter.create_histogram(
    "lineloop.ingest.score_batch_size", unit="{frame}", description="Frames per Triton request.",
    explicit_bucket_boundaries_advisory=(1, 2, 4, 8, 16, 32, 64),
)
missing_predictions = _meter.create_counter(
    "lineloop.ingest.predictions_missing", unit="{frame}",
    description="Frames published without a cloud prediction. Attributes: cause.",
)

INPUT, PROBABILITIES, EMBEDDING = "images", "probabilities", "embedding"


def routes_to_canary(frame_id: str, deployment: Deployment) -> bool:
    if not deployment.canary_version or deployment.canary_share <= 0:
        return False
    if not deployment.production_version:
        return True
    bucket = int.from_bytes(hashlib.sha256(frame_id.encode()).digest()[:4], "big") / 2**32
    return bucket < deployment.canary_share


def missing(reason: str, cause: str, model: str = "", version: str = "", canary: bool = False) -> Prediction:
    """A frame without a prediction; `model`: the one that should have scored it, so the monitor
    tells a scoring outage from a line that has no model yet."""
    missing_predictions.add(1, {"cause": cause})
    return Prediction(
        status=PredictionStatus.PREDICTION_STATUS_MISSING, source=PredictionSource.PREDICTION_SOURCE_CLOUD,
        missing_reason=reason, model_name=model, model_version=version, canary=canary,
    )


class _ModelUnavailable(Exception):
    pass


class _Batcher:
    """Collects inputs for one model version; one Triton request per batch."""

    def __init__(self, scorer: TritonScorer, model: str, version: str, size: int, max_batch: int) -> None:
        self.scorer, self.model, self.version = scorer, model, version
        self.size, self.max_batch = size, max_batch
        self._pending: list[tuple[np.ndarray, asyncio.Future]] = []
        self._timer: asyncio.TimerHandle | None = None

    def submit(self, array: np.ndarray) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((array, future))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.scorer.max_delay_s, self._flush)
        return future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            self.scorer._spawn(self._infer(batch))

    async def _infer(self, batch: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        batch_sizes.record(len(batch), {"model": self.model})
        try:
            images = triton.InferInput(INPUT, [len(batch), 3, self.size, self.size], "FP32")
            images.set_data_from_numpy(np.stack([a for a, _ in batch]))
            result = await self.scorer.client.infer(
                self.model, [images], model_version=self.version,
                outputs=[triton.InferRequestedOutput(PROBABILITIES), triton.InferRequestedOutput(EMBEDDING)],
                client_timeout=self.scorer.timeout_s,
            )
            probabilities, embedding = result.as_numpy(PROBABILITIES), result.as_numpy(EMBEDDING)
            if probabilities is None or embedding is None or len(probabilities) != len(batch):
                raise _ModelUnavailable(f"{self.model}:{self.version} answered without {PROBABILITIES}/{EMBEDDING}")
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for index, (_, future) in enumerate(batch):
            if not future.done():
                future.set_result((probabilities[index], embedding[index]))


class TritonScorer:
    """Scores decoded frames against the model serving their line."""

    def __init__(
        self,
        url: str,
        deployments: Callable[[], dict[str, Deployment]],
        *,
        timeout_s: float = 5.0,
        max_batch: int = 32,
        max_delay_ms: float = 2.0,
    ) -> None:
        self.url = url
        self.deployments = deployments
        self.timeout_s = timeout_s
        self.max_batch = max_batch
        self.max_delay_s = max_delay_ms / 1000.0
        self.client: triton.InferenceServerClient | None = None
        self._batchers: dict[tuple[str, str], _Batcher] = {}
        self._tasks: set[asyncio.Task] = set()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.client is not None:
            await self.client.close()
            self.client = None

    def forget_models(self) -> None:
        """Drop cached model metadata (a model was promoted or reloaded)."""
        self._batchers.clear()

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _batcher(self, model: str, version: str) -> _Batcher:
        key = (model, version)
        batcher = self._batchers.get(key)
        if batcher is not None:
            return batcher
        try:
            meta = await self.client.get_model_metadata(model, version, client_timeout=self.timeout_s)
            config = (await self.client.get_model_config(model, version, client_timeout=self.timeout_s)).config
        except InferenceServerException as exc:
            if "UNAVAILABLE" in str(exc.status()):
                raise  # Triton itself is unreachable, not the model
            raise _ModelUnavailable(f"Triton has no ready model {model}:{version}: {exc.message()}") from exc
        shape = next((list(i.shape) for i in meta.inputs if i.name == INPUT), None)
        if shape is None or len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3] or shape[2] <= 0:
            raise _ModelUnavailable(f"{model}:{version} input {INPUT!r} is {shape}, not [N, 3, S, S]")
        model_max = config.max_batch_size or 1
        batcher = _Batcher(self, model, version, int(shape[2]), max(1, min(self.max_batch, model_max)))
        self._batchers[key] = batcher
        return batcher

    async def score(self, frame_id: str, line_id: str, image: Image.Image) -> Prediction:
        deployment = self.deployments().get(line_id)
        if deployment is None:
            return missing(f"no model deployed for line {line_id!r}", "no_model")
        canary = routes_to_canary(frame_id, deployment)
        version = deployment.canary_version if canary else deployment.production_version
        classes = deployment.canary_classes if canary else deployment.production_classes
        model = deployment.triton_model
        if self.client is None:
            # Made on first use, on the loop that scores (grpc.aio channels belong to one loop).
            self.client = triton.InferenceServerClient(self.url)
        started = time.perf_counter()
        try:
            batcher = await self._batcher(model, version)
            array = await asyncio.to_thread(to_model_input, image, batcher.size)
            probabilities, embedding = await batcher.submit(array)
        except _ModelUnavailable as exc:
            return missing(str(exc), "model_unavailable", model, version, canary)
        except InferenceServerException as exc:
            # Triton down or refusing: the frame goes on without a prediction.
            self._batchers.pop((model, version), None)
            status = str(exc.status() or "error").removeprefix("StatusCode.")
            return missing(
                f"Triton at {self.url} {status} scoring with {model}:{version}: {exc.message()}",
                "triton_unavailable" if status == "UNAVAILABLE" else "triton_error", model, version, canary,
            )
        except Exception as exc:
            log.exception("scoring %s with %s:%s failed", frame_id, model, version)
            return missing(f"scoring with {model}:{version} failed: {type(exc).__name__}: {exc}", "error",
                           model, version, canary)
        names = list(classes) if len(classes) == len(probabilities) else [f"class_{i}" for i in range(len(probabilities))]
        best = int(np.argmax(probabilities))
        return Prediction(
            status=PredictionStatus.PREDICTION_STATUS_OK,
            source=PredictionSource.PREDICTION_SOURCE_CLOUD,
            model_name=model,
            model_version=version,
            predicted_class=names[best],
            scores={name: float(p) for name, p in zip(names, probabilities)},
            embedding=[float(v) for v in embedding],
            latency_ms=(time.perf_counter() - started) * 1000.0,
            canary=canary,
        )


class ServingPicture:
    """The line → deployment map from the database, re-read every `refresh_s`.

    Replicas share the database, and only one of them applies each
    models.promoted.v1 event, so each replica re-reads what the others recorded.
    """

    def __init__(self, db, refresh_s: float) -> None:
        self._db = db
        self._refresh_s = refresh_s
        self._snapshot: dict[str, Deployment] = {}
        self._loaded_at = float("-inf")

    def invalidate(self) -> None:
        self._loaded_at = float("-inf")

    def __call__(self) -> dict[str, Deployment]:
        now = time.monotonic()
        if now - self._loaded_at >= self._refresh_s:
            with self._db.session() as session:
                self._snapshot = load_deployments(session)
            self._loaded_at = now
        return self._snapshot
