"""The documented inline image limit, the topics' record limit and ingest's check agree (one constant).

A gateway that follows the README sends a JPEG of exactly MAX_INLINE_IMAGE_BYTES inline, as base64 in the
JSON mapping, with a plain Kafka client whose max.request.size is MAX_RECORD_BYTES: it is ingested. One byte
more is refused with the reason, and the same image sent the README's other way (uploaded, then `imageRef`)
is ingested.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct

import numpy as np
import pytest_asyncio
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from PIL import Image

from lineloop.bus.cloudevents import JSON, make_headers
from lineloop.bus.topics import topic_configs
from lineloop.contracts.topics import MAX_INLINE_IMAGE_BYTES, MAX_RECORD_BYTES, event_type
from lineloop.ingest.testing import (
    EventReader,
    ingest_settings,
    object_store,
    running_ingest,
    skip_group_to_end,
    uid,
)
from lineloop.v1.common_pb2 import ObjectRef
from lineloop.v1.events_pb2 import FrameCaptured, RejectReason

COM_MAX = 65533  # data bytes in one JPEG comment segment (its length field counts itself)


def jpeg_of_exactly(size: int, seed: int) -> bytes:
    """A camera-like noisy 1024x1024 JPEG, brought to exactly `size` bytes with comment segments after SOI."""
    pixels = np.random.default_rng(seed).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    body = out.getvalue()
    padding, segments = size - len(body), []
    assert padding >= 4 + 1, f"the base image ({len(body)} bytes) is too large for {size}"
    while padding:
        # Each segment costs 4 bytes of marker and length; never leave fewer than 5 for the last one.
        data = min(COM_MAX, padding - 4)
        if 0 < padding - 4 - data < 5:
            data -= 5
        segments.append(b"\xff\xfe" + struct.pack(">H", data + 2) + b"\0" * data)
        padding -= data + 4
    image = body[:2] + b"".join(segments) + body[2:]
    assert len(image) == size and Image.open(io.BytesIO(image)).size == (1024, 1024)
    return image


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ingest(stack, tmp_path_factory):
    settings = ingest_settings(stack, tmp_path_factory.mktemp("ingest-size") / "ingest.db")
    await skip_group_to_end(stack, settings.consumer_group)
    async with running_ingest(settings) as service:
        yield service


def document(frame_id: str, line: str, image: bytes | None = None, ref: ObjectRef | None = None) -> bytes:
    """The JSON mapping, written as a gateway in any language would."""
    doc = {"frameId": frame_id, "lineId": line, "cameraId": "cam-big", "gatewayId": "gw-big",
           "contentType": "image/jpeg"}
    if image is not None:
        doc["inlineImage"] = base64.b64encode(image).decode()
    if ref is not None:
        doc["imageRef"] = {"bucket": ref.bucket, "key": ref.key, "sha256": ref.sha256}
    return json.dumps(doc).encode()


async def test_an_inline_image_at_the_documented_limit_is_ingested_and_one_byte_more_is_refused(ingest, stack, line):
    at_limit, over_limit = jpeg_of_exactly(MAX_INLINE_IMAGE_BYTES, seed=1), jpeg_of_exactly(MAX_INLINE_IMAGE_BYTES + 1, seed=2)
    uploaded = object_store(stack).put_content_addressed("lineloop-frames", over_limit, "jpg", "image/jpeg")
    records = {
        uid("at-limit"): document("", line, image=at_limit),
        uid("over-limit"): document("", line, image=over_limit),
        uid("by-ref"): document("", line, ref=ObjectRef(bucket=uploaded.bucket, key=uploaded.key, sha256=uploaded.sha256)),
    }
    records = {frame_id: value.replace(b'"frameId": ""', f'"frameId": "{frame_id}"'.encode())
               for frame_id, value in records.items()}
    at_id, over_id, ref_id = records
    assert len(records[at_id]) > 1_398_000  # base64: well over Kafka's default 1 MB record
    et = event_type(FrameCaptured)
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:  # the topic ingest created takes such a record (a real Kafka broker enforces it; Tansu only stores it)
        (configs,) = (await topic_configs(admin, [et.topic])).values()
    finally:
        await admin.close()
    assert int(configs["max.message.bytes"]) == MAX_RECORD_BYTES > max(len(v) for v in records.values()) + 1024
    # A plain client, configured as the README says (max.request.size = the topics' max.message.bytes).
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, max_request_size=MAX_RECORD_BYTES)
    await producer.start()
    try:
        async with EventReader(stack) as events:
            for value in records.values():
                headers = {**make_headers(et, source="gateway/gw-big"), "content-type": JSON}
                await producer.send_and_wait(et.topic, value, key=b"cam-big",
                                             headers=[(k, v.encode()) for k, v in headers.items()])
            await events.wait_for(records, timeout=120)
    finally:
        await producer.stop()

    assert at_id not in events.rejected, events.rejected.get(at_id)
    (ingested,) = events.ingested[at_id]
    assert ingested.image.size_bytes == MAX_INLINE_IMAGE_BYTES
    assert ingested.image.sha256 == hashlib.sha256(at_limit).hexdigest()
    assert (ingested.width, ingested.height) == (1024, 1024)

    assert over_id not in events.ingested
    (rejected,) = events.rejected[over_id]
    assert rejected.reason == RejectReason.REJECT_REASON_IMAGE_TOO_LARGE
    assert rejected.detail == (f"inline image is {MAX_INLINE_IMAGE_BYTES + 1} bytes, the limit is "
                               f"{MAX_INLINE_IMAGE_BYTES}; upload it and send image_ref")

    assert ref_id not in events.rejected, events.rejected.get(ref_id)
    (by_ref,) = events.ingested[ref_id]
    assert by_ref.image.sha256 == uploaded.sha256 and by_ref.image.size_bytes == MAX_INLINE_IMAGE_BYTES + 1
