"""Test helpers for ingest and its clients: a service on a running stack, gateway-like
publishing, crafted frames and a reader of the events ingest publishes."""

from __future__ import annotations

import asyncio
import struct
import uuid
import zlib
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from google.protobuf import json_format
from google.protobuf.message import Message

from lineloop.bus import Bus, kafka_group_id
from lineloop.bus.cloudevents import JSON, make_headers
from lineloop.contracts.topics import event_type
from lineloop.ingest.main import build
from lineloop.ingest.settings import IngestSettings
from lineloop.runtime import StackSettings
from lineloop.storage.objects import ObjectStore
from lineloop.v1.events_pb2 import FrameCaptured, FrameIngested, FrameRejected, ModelPromoted
from lineloop.vision import AppleRenderer, encode_jpeg

# Fast group joins on the embedded broker.
FAST_GROUP = {"kafka_session_timeout_ms": 6000, "kafka_heartbeat_interval_ms": 1000}


def stack_settings(stack, **overrides) -> StackSettings:
    values = {
        "kafka_bootstrap": stack.kafka_bootstrap, "s3_endpoint": stack.s3_endpoint,
        "s3_access_key": stack.s3_access_key, "s3_secret_key": stack.s3_secret_key,
        "triton_grpc": stack.triton_grpc, "triton_http": stack.triton_http, "state_dir": stack.state_dir,
        "log_format": "console",
    }
    return StackSettings(**{**values, **overrides})


def ingest_settings(stack, database: Path | str, *, triton_grpc: str | None = None, **overrides) -> IngestSettings:
    url = database if isinstance(database, str) else f"sqlite:///{database}"
    values = dict(
        grpc_port=0, metrics_port=None, database_url=url, consumer_group=f"ingest-{uuid.uuid4().hex[:8]}",
        stack=stack_settings(stack, **({"triton_grpc": triton_grpc} if triton_grpc else {})), **FAST_GROUP,
    )
    values.update(overrides)
    return IngestSettings(**values)


@asynccontextmanager
async def running_ingest(settings: IngestSettings) -> AsyncIterator:
    service = build(settings)
    async with service.running():
        yield service


async def ensure_topics(stack, topics: list[str]) -> None:
    await Bus(stack.kafka_bootstrap, source="test/ingest", partitions=stack.config.topic_partitions).ensure_topics(topics)


def object_store(stack) -> ObjectStore:
    return ObjectStore.from_url(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def jpeg(seed: int, index: int = 0, size: int = 64) -> bytes:
    return encode_jpeg(AppleRenderer(size, seed=seed).render(index).image)


def frame(image: bytes | None = None, *, line: str, camera: str = "cam-1", frame_id: str | None = None,
          **fields) -> FrameCaptured:
    msg = FrameCaptured(
        frame_id=frame_id or uid("f"), line_id=line, camera_id=camera, gateway_id="gw-1",
        content_type="image/jpeg", **fields,
    )
    if image is not None:
        msg.inline_image = image
    if not msg.HasField("captured_at"):
        msg.captured_at.FromDatetime(datetime.now(UTC))
    return msg


async def publish(stack, messages: Iterable[Message], *, as_json: bool = False) -> None:
    """Publish events like a gateway with a plain Kafka client: CloudEvents headers, protobuf or JSON."""
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, linger_ms=5)
    await producer.start()
    try:
        sends = []
        for msg in messages:
            et = event_type(msg)
            headers = make_headers(et, source="test/gateway")
            if as_json:
                headers["content-type"] = JSON
                value = json_format.MessageToJson(msg).encode()
            else:
                value = msg.SerializeToString()
            sends.append(await producer.send(
                et.topic, value, key=et.key_of(msg), headers=[(k, v.encode()) for k, v in headers.items()]
            ))
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


class EventReader:
    """Reads frames.ingested.v1 and frames.rejected.v1 from the beginning (no group), by frame id."""

    def __init__(self, stack) -> None:
        self.stack = stack
        self.ingested: dict[str, list[FrameIngested]] = {}
        self.rejected: dict[str, list[FrameRejected]] = {}
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> EventReader:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=self.stack.kafka_bootstrap, enable_auto_commit=False)
        await self._consumer.start()
        self._types = {event_type(FrameIngested).topic: FrameIngested, event_type(FrameRejected).topic: FrameRejected}
        await ensure_topics(self.stack, list(self._types))
        await self._consumer.topics()  # refreshes the metadata partitions_for_topic reads
        partitions = []
        for topic in self._types:
            for p in self._consumer.partitions_for_topic(topic) or ():
                partitions.append(TopicPartition(topic, p))
        self._consumer.assign(partitions)
        await self._consumer.seek_to_beginning(*partitions)
        return self

    async def __aexit__(self, *exc) -> None:
        await self._consumer.stop()

    async def wait_for(self, frame_ids: Iterable[str], timeout: float = 60.0) -> None:
        wanted = set(frame_ids)
        deadline = asyncio.get_running_loop().time() + timeout
        while not wanted <= (set(self.ingested) | set(self.rejected)):
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                missing = wanted - set(self.ingested) - set(self.rejected)
                raise AssertionError(f"no ingested/rejected event for {len(missing)} frames: {sorted(missing)[:5]}")
            batches = await self._consumer.getmany(timeout_ms=int(min(left, 0.5) * 1000))
            for tp, records in batches.items():
                cls = self._types[tp.topic]
                for record in records:
                    msg = cls.FromString(record.value)
                    target = self.ingested if cls is FrameIngested else self.rejected
                    target.setdefault(msg.frame_id, []).append(msg)

    async def settle(self, seconds: float) -> None:
        """Keep reading for a while (to see events that should NOT come)."""
        deadline = asyncio.get_running_loop().time() + seconds
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            batches = await self._consumer.getmany(timeout_ms=int(left * 1000))
            for tp, records in batches.items():
                cls = self._types[tp.topic]
                for record in records:
                    msg = cls.FromString(record.value)
                    (self.ingested if cls is FrameIngested else self.rejected).setdefault(msg.frame_id, []).append(msg)


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and header claiming width x height, with a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


async def skip_group_to_end(stack, group: str, messages=(FrameCaptured, ModelPromoted)) -> None:
    """Commit `group`'s offsets at the end of the topics it reads, before it first joins.

    The session broker holds every frame other tests published; a new ingest group
    would otherwise replay (and re-publish) all of them from the beginning. The topics are
    skipped concurrently: each ends with a one-second quiet read, which in sequence cost a
    second per topic at every service start in the tests.
    """
    topics = [event_type(msg).topic for msg in messages]
    await ensure_topics(stack, topics)
    # One Kafka group per (service, topic): lineloop.bus.kafka_group_id; so one consumer each.
    await asyncio.gather(*(_skip_topic_to_end(stack, kafka_group_id(group, topic), topic) for topic in topics))


async def _skip_topic_to_end(stack, kafka_group: str, topic: str) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, group_id=kafka_group, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # refreshes the metadata partitions_for_topic reads
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            return
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        # Read past the reported ends: the embedded broker reports the end of a partition whose
        # last write was a batch of N records as the batch's first offset + 1.
        for tp, offset in ends.items():
            consumer.seek(tp, offset)
        while batch := await consumer.getmany(timeout_ms=1000):
            for tp, records in batch.items():
                ends[tp] = max(ends[tp], records[-1].offset + 1)
        await consumer.commit({tp: OffsetAndMetadata(offset, "") for tp, offset in ends.items()})
    finally:
        await consumer.stop()
