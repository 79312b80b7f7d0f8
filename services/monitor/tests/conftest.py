"""A real monitor on the test session's broker and object store (lineloop.stack.pytest_plugin)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import grpc
import pytest
from google.protobuf.message import DecodeError

from lineloop.ingest.testing import skip_group_to_end
from lineloop.monitor.main import build
from lineloop.monitor.settings import MonitorSettings
from lineloop.runtime import StackSettings
from lineloop.v1 import events_pb2, monitor_pb2, monitor_pb2_grpc, options_pb2

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
def publish_in_order(monitor):
    """publish(producer, frames, batch): `batch` FrameIngested events at a time, and each batch taken
    in by the monitor (GetModelHealth counts them) before the next is sent, so frames sent in phases
    (clean, then a dirty lens) reach the windows in those phases; order within a batch may vary.

    Being on the broker is not enough: frames are keyed by camera, and a monitor that finds several
    batches waiting (still joining its group, or behind) may take one camera's partition whole before
    the other's, numbering dirty frames of one camera into the line's reference window."""
    async def publish(producer, msgs, batch: int = 20) -> None:
        sent: Counter[str] = Counter()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{monitor.grpc_port}") as channel:
            stub = monitor_pb2_grpc.MonitorServiceStub(channel)
            for start in range(0, len(msgs), batch):
                chunk = msgs[start:start + batch]
                await asyncio.gather(*(producer.publish(m) for m in chunk))
                sent.update(m.line_id for m in chunk)
                for line_id, count in sent.items():
                    await _taken_in(stub, line_id, count)
    return publish


async def _taken_in(stub, line_id: str, count: int, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    seen = 0
    while asyncio.get_running_loop().time() < deadline:
        try:
            health = await stub.GetModelHealth(monitor_pb2.GetModelHealthRequest(line_id=line_id))
            seen = health.frames_ingested
        except grpc.aio.AioRpcError as e:  # NOT_FOUND until the line's first frame is in
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise
        if seen >= count:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"the monitor took in {seen} of {count} frames of {line_id} in {timeout} s")


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

