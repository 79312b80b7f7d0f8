"""Fixtures for the labeling tests: frames.ingested.v1 payloads, databases, a running service."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import grpc
import pytest

from lineloop.bus import outbox
from lineloop.bus.cloudevents import Envelope
from lineloop.bus.bus import EventContext
from lineloop.labeling import handlers_frames_ingested, main, state
from lineloop.labeling.settings import LabelingSettings
from lineloop.runtime import StackSettings
from lineloop.storage.sql import Database
from lineloop.v1.common_pb2 import ObjectRef, Prediction, PredictionSource, PredictionStatus
from lineloop.v1.events_pb2 import FrameIngested
from lineloop.v1.labeling_pb2 import GetFrameLabelsRequest
from lineloop.v1.labeling_pb2_grpc import LabelingServiceStub



def frame_event(
    line_id: str, camera_id: str = "cam-1", scores: dict[str, float] | None = None, *,
    frame_id: str | None = None, captured_at: datetime | None = None, model_version: str = "3", canary: bool = False,
) -> FrameIngested:
    """A frames.ingested.v1 as ingest publishes it; `scores=None`: no model deployed yet."""
    frame_id = frame_id or f"f-{uuid.uuid4().hex[:12]}"
    sha = hashlib.sha256(frame_id.encode()).hexdigest()
    msg = FrameIngested(
        frame_id=frame_id, line_id=line_id, camera_id=camera_id, gateway_id="gw-1",
        image=ObjectRef(bucket="lineloop-frames", key=f"{sha[:2]}/{sha}.jpg", sha256=sha, size_bytes=1234),
        content_type="image/jpeg", width=64, height=64,
    )
    msg.captured_at.FromDatetime(captured_at or datetime.now(UTC))
    msg.ingested_at.FromDatetime(datetime.now(UTC))
    if scores is None:
        msg.prediction.status = PredictionStatus.PREDICTION_STATUS_MISSING
        msg.prediction.missing_reason = "no model deployed for this line"
    else:
        msg.prediction.CopyFrom(Prediction(
            status=PredictionStatus.PREDICTION_STATUS_OK, source=PredictionSource.PREDICTION_SOURCE_CLOUD,
            model_name="apples", model_version=model_version, predicted_class=max(scores, key=scores.get),
            scores=scores, canary=canary,
        ))
    return msg


@pytest.fixture
def make_frame() -> Callable[..., FrameIngested]:
    return frame_event


@pytest.fixture
def labeling_db(database_url: str):
    """The labeling schema (and the bus's outbox) on SQLite and on PostgreSQL."""
    db = Database(database_url)
    outbox.migrate(db)
    db.migrate(state.SCHEMA_COMPONENT, state.SCHEMA_VERSION, state.metadata)
    yield db
    db.dispose()


@pytest.fixture
def ingest_into(labeling_db):
    """Run the real frames.ingested.v1 handler in a real transaction, as the bus would."""

    async def ingest(cfg: LabelingSettings, msg: FrameIngested) -> None:
        handler = handlers_frames_ingested.make_handler(cfg)
        env = Envelope(uuid.uuid4().hex, "test", "lineloop.v1.FrameIngested", None, "application/x-protobuf", {})
        async with labeling_db.write() as s:
            await handler(msg, EventContext(env, "frames.ingested.v1", 0, 0, "lineloop/labeling", session=s))

    return ingest


def stack_settings(stack) -> StackSettings:
    return StackSettings(
        kafka_bootstrap=stack.kafka_bootstrap, s3_endpoint=stack.s3_endpoint, s3_access_key=stack.s3_access_key,
        s3_secret_key=stack.s3_secret_key, state_dir=stack.state_dir, log_format="console",
    )


def service_settings(stack, database_url: str, **overrides) -> LabelingSettings:
    values = dict(
        grpc_port=0, metrics_port=None, database_url=database_url, stack=stack_settings(stack),
        consumer_group=f"labeling-test-{uuid.uuid4().hex[:8]}",
        kafka_session_timeout_ms=6000, kafka_heartbeat_interval_ms=1000,
        cut_min_labels=1000, cut_min_labels_drift=1000, policy_interval_s=0.3,
    )
    values.update(overrides)
    return LabelingSettings(**values)


@asynccontextmanager
async def running_labeling(cfg: LabelingSettings) -> AsyncIterator[tuple[object, LabelingServiceStub]]:
    service = main.build(cfg)
    async with service.running():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
            yield service, LabelingServiceStub(channel)


async def wait_known(stub: LabelingServiceStub, frame_ids: list[str], timeout_s: float = 60.0) -> None:
    """Until the service has consumed every one of these frames."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    pending = list(frame_ids)
    while pending:
        try:
            await stub.GetFrameLabels(GetFrameLabelsRequest(frame_id=pending[-1]))
            pending.pop()
            continue
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"labeling never consumed {pending}")
        await asyncio.sleep(0.2)


@pytest.fixture(scope="session")
def helpers():
    """Module-level helpers for tests (importlib mode cannot import conftest)."""

    class Helpers:
        frame_event = staticmethod(frame_event)
        service_settings = staticmethod(service_settings)
        running_labeling = staticmethod(running_labeling)
        wait_known = staticmethod(wait_known)

    return Helpers
