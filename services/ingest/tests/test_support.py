"""Crafted inputs and broker helpers shared by ingest tests (not a test module)."""

from __future__ import annotations

import struct
import zlib

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from lineloop.contracts.topics import event_type
from lineloop.v1.events_pb2 import FrameCaptured, ModelPromoted


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and header claiming width x height, with a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


async def skip_group_to_end(stack, group: str, messages=(FrameCaptured, ModelPromoted)) -> None:
    """Commit `group`'s offsets at the end of the topics it reads, before it first joins.

    The session broker holds every frame other tests published; a new ingest group
    would otherwise replay (and re-publish) all of them from the beginning.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = []
        for msg in messages:
            topic = event_type(msg).topic
            for p in await consumer.partitions_for_topic(topic) or ():
                partitions.append(TopicPartition(topic, p))
        if not partitions:
            return
        consumer.assign(partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.commit({tp: OffsetAndMetadata(offset, "") for tp, offset in ends.items()})
    finally:
        await consumer.stop()
