"""Cloud scoring on the real Triton: routing, canary share, batching, Triton down."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.grpc as grpcclient
from PIL import Image

from lineloop.ingest.testing import (
    EventReader,
    frame,
    ingest_settings,
    jpeg,
    object_store,
    publish,
    running_ingest,
    skip_group_to_end,
    uid,
)
from lineloop.serving import ServingOptions, TritonControl, open_repository
from lineloop.stack.config import free_ports
from lineloop.v1.common_pb2 import PredictionStatus
from lineloop.v1.events_pb2 import LineDeployment, ModelPromoted
from lineloop.vision import CLASSES, to_model_input

SIZE, EMBED = 32, 8


class TinyApples(torch.nn.Module):
    """The serving contract in miniature: images [N,3,S,S] -> probabilities [N,4], embedding [N,8]."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = torch.nn.Sequential(torch.nn.AvgPool2d(8), torch.nn.Flatten(), torch.nn.Linear(48, EMBED), torch.nn.Tanh())
        self.head = torch.nn.Linear(EMBED, len(CLASSES))

    def forward(self, images):
        embedding = self.features(images)
        return torch.softmax(self.head(embedding) * 5, dim=1), embedding


def export(seed: int, path) -> None:
    torch.onnx.export(
        TinyApples(seed).eval(), torch.zeros(1, 3, SIZE, SIZE), str(path), dynamo=False, opset_version=17,
        input_names=["images"], output_names=["probabilities", "embedding"],
        dynamic_axes={"images": {0: "n"}, "probabilities": {0: "n"}, "embedding": {0: "n"}},
    )


@pytest.fixture(scope="module")
def triton_model(stack, tmp_path_factory):
    """A model with versions 1 (production) and 2 (canary) loaded on the session Triton."""
    name = uid("apples")
    folder = tmp_path_factory.mktemp("onnx")
    sessions = {}
    repository = open_repository(stack.triton_repository, stack.s3_access_key, stack.s3_secret_key)
    for version in (1, 2):
        path = folder / f"v{version}.onnx"
        export(version, path)
        repository.write_model_version(name, version, path, labels=CLASSES,
                                       options=ServingOptions(max_batch_size=16, versions=(1, 2)))
        sessions[str(version)] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with TritonControl(stack.triton_grpc) as control:
        control.load(name)
        for version in (1, 2):
            control.wait_ready(name, version)
        yield name, sessions
        control.unload(name)


async def until_line_is_served(stack, events: EventReader, line: str) -> None:
    """Send frames until ingest has applied the promotion (promotions and frames are separate topics)."""
    for _ in range(60):
        probe = frame(jpeg(seed=98), line=line)
        await publish(stack, [probe])
        await events.wait_for([probe.frame_id])
        if "no model deployed" not in events.ingested[probe.frame_id][0].prediction.missing_reason:
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"ingest never learned the deployment of {line}")


def promotion(model: str, line: str, canary_share: float) -> ModelPromoted:
    return ModelPromoted(
        model_name=model, version="2", classes=CLASSES,
        deployments=[LineDeployment(line_id=line, triton_model=model, production_version="1",
                                    canary_version="2", canary_share=canary_share)],
    )


async def test_frames_are_scored_by_the_lines_model_with_the_canary_share(stack, tmp_path, line, triton_model):
    model, sessions = triton_model
    settings = ingest_settings(stack, tmp_path / "ingest.db")
    await skip_group_to_end(stack, settings.consumer_group)
    images = [jpeg(seed=100 + i, size=48) for i in range(24)]
    frames = [frame(image, line=line, camera=f"cam-{i % 4}") for i, image in enumerate(images)]
    other_line = frame(jpeg(seed=99), line=uid("unserved"))
    async with running_ingest(settings), EventReader(stack) as events:
        await publish(stack, [promotion(model, line, canary_share=0.5)])
        await until_line_is_served(stack, events, line)
        stats_before = _stats(stack, model)
        await publish(stack, frames + [other_line])
        await events.wait_for([f.frame_id for f in frames] + [other_line.frame_id])
    stats_after = _stats(stack, model)

    canaries = 0
    for f, image in zip(frames, images):
        (event,) = events.ingested[f.frame_id]
        p = event.prediction
        assert p.status == PredictionStatus.PREDICTION_STATUS_OK, p.missing_reason
        assert p.model_name == model and p.model_version == ("2" if p.canary else "1")
        canaries += p.canary
        # The prediction is the model's output on the shared preprocessing of the stored image.
        x = to_model_input(Image.open(io.BytesIO(image)), SIZE)[None]
        probabilities, embedding = sessions[p.model_version].run(None, {"images": x})
        assert set(p.scores) == set(CLASSES)
        np.testing.assert_allclose([p.scores[c] for c in CLASSES], probabilities[0], atol=1e-4)
        np.testing.assert_allclose(p.embedding, embedding[0], atol=1e-4)
        assert p.predicted_class == CLASSES[int(np.argmax(probabilities[0]))]
        assert p.latency_ms > 0
    assert 0 < canaries < len(frames)  # share 0.5, routed by frame id
    (unserved,) = events.ingested[other_line.frame_id]
    assert unserved.prediction.status == PredictionStatus.PREDICTION_STATUS_MISSING
    assert unserved.prediction.model_name == ""  # no model should have scored it
    # Concurrent frames went to Triton together: fewer executions than frames.
    inferences = sum(after[0] - before[0] for after, before in zip(stats_after, stats_before))
    executions = sum(after[1] - before[1] for after, before in zip(stats_after, stats_before))
    assert inferences == len(frames) and executions < len(frames)


def _stats(stack, model: str) -> list[tuple[int, int]]:
    """(inference_count, execution_count) of versions 1 and 2."""
    client = grpcclient.InferenceServerClient(stack.triton_grpc)
    try:
        stats = client.get_inference_statistics(model)
        by_version = {s.version: (s.inference_count, s.execution_count) for s in stats.model_stats}
        return [by_version.get(v, (0, 0)) for v in ("1", "2")]
    finally:
        client.close()


async def test_triton_down_frames_still_stored_and_published_without_prediction(stack, tmp_path, line, triton_model):
    model, _ = triton_model
    (closed_port,) = free_ports(1)
    settings = ingest_settings(stack, tmp_path / "ingest.db", triton_grpc=f"127.0.0.1:{closed_port}")
    await skip_group_to_end(stack, settings.consumer_group)
    frames = [frame(jpeg(seed=200 + i), line=line) for i in range(5)]
    async with running_ingest(settings), EventReader(stack) as events:
        await publish(stack, [promotion(model, line, canary_share=0.0)])
        await until_line_is_served(stack, events, line)
        await publish(stack, frames)
        await events.wait_for([f.frame_id for f in frames])
    store = object_store(stack)
    for f in frames:
        (event,) = events.ingested[f.frame_id]
        assert event.prediction.status == PredictionStatus.PREDICTION_STATUS_MISSING
        assert store.get_bytes(event.image.bucket, event.image.key) == f.inline_image
        reason = event.prediction.missing_reason
        assert "Triton" in reason and "UNAVAILABLE" in reason and model in reason, reason
        # The model that should have scored it: the monitor counts it as an outage, not as a
        # frame from before the line had a model.
        assert (event.prediction.model_name, event.prediction.model_version) == (model, "1")
