"""A real monitor on the test session's broker and object store (lineloop.stack.pytest_plugin)."""

from __future__ import annotations

import uuid

import pytest

from lineloop.ingest.testing import skip_group_to_end
from lineloop.monitor.main import build
from lineloop.monitor.settings import MonitorSettings
from lineloop.runtime import StackSettings
from lineloop.v1 import events_pb2

FAST = {"kafka_session_timeout_ms": 6000, "kafka_heartbeat_interval_ms": 1000}


@pytest.fixture
async def monitor(stack, tmp_path, request):
    # A group of its own, started at the end of the topics: the shared broker holds every other
    # test's frames, and a group reused across tests can be left waiting on members that are gone.
    group = f"monitor-test-{uuid.uuid4().hex[:8]}"
    await skip_group_to_end(stack, group, (events_pb2.FrameIngested, events_pb2.FrameRejected,
                                           events_pb2.LabelCreated, events_pb2.ModelPromoted))
    settings = MonitorSettings(
        grpc_port=0, metrics_port=None, http_port=0, database_url=f"sqlite:///{tmp_path / 'monitor.db'}", consumer_group=group,
        **{"reference_frames": 100, "current_frames": 50, **getattr(request, "param", {})},
        evaluate_every=10, min_labels_for_accuracy=5, **FAST,
        stack=StackSettings(kafka_bootstrap=stack.kafka_bootstrap, s3_endpoint=stack.s3_endpoint,
                            s3_access_key=stack.s3_access_key, s3_secret_key=stack.s3_secret_key, log_format="console"),
    )
    service = build(settings)
    async with service.running():
        yield service
