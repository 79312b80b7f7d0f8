"""`lineloop gateway simulate` feeding a running ingest: Kafka (inline, upload) and gRPC."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest_asyncio

from lineloop.cli.gateway import GrpcSink, KafkaSink, SimulatedGateway, SimulationConfig, simulate
from lineloop.ingest.testing import EventReader, ingest_settings, object_store, running_ingest, skip_group_to_end
from lineloop.v1.common_pb2 import Prediction, PredictionSource, PredictionStatus
from lineloop.vision import CLASSES, Drift


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ingest(stack, tmp_path_factory):
    settings = ingest_settings(stack, tmp_path_factory.mktemp("ingest") / "ingest.db")
    await skip_group_to_end(stack, settings.consumer_group)
    async with running_ingest(settings) as service:
        yield service


async def lineloop(stack, *args: str) -> tuple[int, str, str]:
    """Run the `lineloop` CLI without blocking the loop the ingest under test runs on."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lineloop.cli.main", *args, env={**os.environ, **stack.env()},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode, out.decode(), err.decode()


def frame_ids(config: SimulationConfig) -> list[str]:
    gateway = SimulatedGateway(config)
    return [gateway.frame_id(i) for i in range(config.frames)]


async def test_simulated_frames_are_ingested_with_the_truth_kept_aside(ingest, stack, line):
    store = object_store(stack)
    edge_calls = []

    def edge_predict(image: bytes) -> Prediction:
        edge_calls.append(len(image))
        return Prediction(status=PredictionStatus.PREDICTION_STATUS_OK, source=PredictionSource.PREDICTION_SOURCE_EDGE,
                          model_name="edge-sim", model_version="1", predicted_class="ok")

    kafka_inline = SimulationConfig(line=line, cameras=2, fps=50, frames=8, seed=1, size=64,
                                    drift=Drift.LIGHTING, drift_at=4)
    kafka_upload = SimulationConfig(line=line, cameras=2, fps=50, frames=4, seed=2, size=64, upload=True)
    over_grpc = SimulationConfig(line=line, cameras=1, fps=50, frames=4, seed=3, size=64)
    async with EventReader(stack) as events:
        first = await simulate(kafka_inline, KafkaSink(stack.kafka_bootstrap, "gw-1"), store, edge_predict=edge_predict)
        await simulate(kafka_upload, KafkaSink(stack.kafka_bootstrap, "gw-1"), store)
        via_grpc = await simulate(over_grpc, GrpcSink(f"127.0.0.1:{ingest.grpc_port}"), store)
        ids = frame_ids(kafka_inline) + frame_ids(kafka_upload) + frame_ids(over_grpc)
        await events.wait_for(ids)
    assert first.sent == 8 and sum(first.labels.values()) == 8 and len(edge_calls) == 8
    assert via_grpc.upload_result == {"accepted": 4, "rejected": 0, "duplicates": 0}
    for index, frame_id in enumerate(ids):
        (event,) = events.ingested[frame_id]
        assert store.get_bytes(event.image.bucket, event.image.key, expected_sha256=event.image.sha256)
        truth = json.loads(store.get_bytes("lineloop-sim", f"truth/{frame_id}.json"))
        assert truth["frame_id"] == frame_id and truth["line_id"] == line and truth["label"] in CLASSES
        assert truth["camera_id"] == event.camera_id
        # The true class never rides in the frame event.
        assert truth["label"] not in set(event.attributes.values())
    for n, frame_id in enumerate(frame_ids(kafka_inline)):
        truth = json.loads(store.get_bytes("lineloop-sim", f"truth/{frame_id}.json"))
        assert truth["drift"] == ("lighting" if n >= 4 else "none")
        assert events.ingested[frame_id][0].edge_prediction.model_name == "edge-sim"


async def test_cli_simulate_over_grpc_prints_a_json_summary(ingest, stack, line):
    code, out, err = await lineloop(
        stack, "gateway", "simulate", "--line", line, "--cameras", "2", "--fps", "20", "--frames", "6",
        "--seed", "5", "--size", "64", "--via", "grpc", "--target", f"127.0.0.1:{ingest.grpc_port}", "--json",
    )
    assert code == 0, err[-2000:]
    summary = json.loads(out)
    assert summary["sent"] == 6 and summary["ingest"] == {"accepted": 6, "rejected": 0, "duplicates": 0}
    assert sum(summary["labels"].values()) == 6


async def test_cli_reports_an_unreachable_ingest_clearly(stack, line):
    code, _, err = await lineloop(
        stack, "gateway", "simulate", "--line", line, "--frames", "1", "--size", "64", "--via", "grpc",
        "--target", "127.0.0.1:1",
    )
    assert code == 3 and "not reachable" in err, err[-2000:]
