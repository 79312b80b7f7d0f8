"""A real monitor on the test session's broker and object store (lineloop.stack.pytest_plugin)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from google.protobuf.message import DecodeError

from lineloop.ingest.testing import skip_group_to_end
from lineloop.monitor.main import build
from lineloop.monitor.settings import MonitorSettings
from lineloop.runtime import StackSettings
from lineloop.v1 import events_pb2, options_pb2

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


@pytest.fixture
def publish_in_order():
    """publish(producer, msgs, batch): `batch` events at a time, acknowledged together. Far faster
    than one by one, and a batch is on the broker before the next is sent, so events sent in
    phases (clean frames, then a dirty lens) arrive in those phases; order within a batch may vary."""
    async def publish(producer, msgs, batch: int = 20) -> None:
        for start in range(0, len(msgs), batch):
            await asyncio.gather(*(producer.publish(m) for m in msgs[start:start + batch]))
    return publish


def _decoded(message_type, value: bytes | None):
    """The record as `message_type`, or None: other tests in the session (the fuzzers) put
    records on these topics that are not events at all."""
    try:
        return message_type.FromString(value or b"")
    except DecodeError:
        return None


@pytest.fixture
def topic_events(stack):
    """read(message_type, predicate, timeout, quiet_s): events of that type on its topic matching
    `predicate`, read from the beginning without a consumer group (so no group join to wait for).
    Returns once some match and none more came for `quiet_s` (0: at the first), or at `timeout`."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def read(message_type, predicate, timeout: float = 40.0, quiet_s: float = 0.0) -> list:
        topic = message_type.DESCRIPTOR.GetOptions().Extensions[options_pb2.topic]
        reader = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, group_id=None, enable_auto_commit=False)
        await reader.start()
        found: list = []
        try:
            await reader._client.force_metadata_update()
            partitions = [TopicPartition(topic, p) for p in reader.partitions_for_topic(topic) or ()]
            if partitions:
                reader.assign(partitions)
                await reader.seek_to_beginning(*partitions)
            loop = asyncio.get_running_loop()
            deadline = last_found = loop.time() + timeout
            while loop.time() < deadline and not (found and loop.time() - last_found >= quiet_s):
                if not partitions:
                    await asyncio.sleep(0.2)
                    continue
                batch = await reader.getmany(timeout_ms=200)
                matching = [m for records in batch.values() for r in records
                            if (m := _decoded(message_type, r.value)) is not None and predicate(m)]
                if matching:
                    found += matching
                    last_found = loop.time()
        finally:
            await reader.stop()
        return found
    return read

