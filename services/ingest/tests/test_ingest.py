"""Ingest against the real embedded stack: broker, S3 store, Triton."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import urllib.request
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, TopicPartition
from google.protobuf.timestamp_pb2 import Timestamp
from PIL import Image
from prometheus_client import REGISTRY

from lineloop.contracts.topics import event_type
from lineloop.ingest.testing import (
    EventReader,
    ensure_topics,
    frame,
    ingest_settings,
    jpeg,
    object_store,
    png_header_only,
    publish,
    running_ingest,
    skip_group_to_end,
    uid,
)
from lineloop.runtime import error_info
from lineloop.v1 import ingest_pb2, ingest_pb2_grpc
from lineloop.v1.common_pb2 import ObjectRef, Prediction, PredictionSource, PredictionStatus
from lineloop.v1.events_pb2 import FrameCaptured, RejectReason

R = RejectReason


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def ingest(stack, tmp_path_factory):
    settings = ingest_settings(stack, tmp_path_factory.mktemp("ingest") / "ingest.db")
    await skip_group_to_end(stack, settings.consumer_group)
    async with running_ingest(settings) as service:
        yield service


async def upload(service, frames) -> ingest_pb2.UploadFramesResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        return await stub.UploadFrames(iter([ingest_pb2.UploadFrameRequest(frame=f) for f in frames]))


async def test_json_over_kafka_and_grpc_upload_take_the_same_path(ingest, stack, line):
    image, other = jpeg(seed=11), jpeg(seed=12)
    store = object_store(stack)
    uploaded = store.put_bytes("lineloop-frames", f"uploads/{uid('u')}.jpg", other, "image/jpeg")
    first = frame(image, line=line)
    edge = Prediction(status=PredictionStatus.PREDICTION_STATUS_OK, source=PredictionSource.PREDICTION_SOURCE_EDGE,
                      model_name="edge", model_version="3", predicted_class="ok", scores={"ok": 0.9})
    first.edge_prediction.CopyFrom(edge)
    async with EventReader(stack) as events:
        await publish(stack, [first], as_json=True)
        await events.wait_for([first.frame_id])
        again = frame(image, line=line, camera="cam-2")
        referenced = frame(line=line, image_ref=ObjectRef(bucket=uploaded.bucket, key=uploaded.key, sha256=uploaded.sha256))
        response = await upload(ingest, [again, referenced])
        await events.wait_for([again.frame_id, referenced.frame_id])

        assert (response.accepted, response.rejected, response.duplicates) == (2, 0, 1)
        (a,), (b,), (c,) = events.ingested[first.frame_id], events.ingested[again.frame_id], events.ingested[referenced.frame_id]
        sha = hashlib.sha256(image).hexdigest()
        assert a.image.sha256 == sha and a.image.key == f"{sha[:2]}/{sha}.jpg" and a.image.bucket == "lineloop-frames"
        assert not a.duplicate and b.duplicate and b.duplicate_of == first.frame_id
        # Same bytes through Kafka-JSON and gRPC: the same stored object, statistics and prediction.
        for field in ("image", "content_type", "width", "height", "quality", "prediction"):
            assert getattr(a, field) == getattr(b, field), field
        assert a.edge_prediction == edge and not b.HasField("edge_prediction")
        assert a.prediction.status == PredictionStatus.PREDICTION_STATUS_MISSING
        assert "no model deployed" in a.prediction.missing_reason
        assert (a.width, a.height, a.content_type) == (64, 64, "image/jpeg")
        assert 0 < a.quality.brightness_mean < 255 and a.quality.sharpness > 0
        assert c.image.key == f"{uploaded.sha256[:2]}/{uploaded.sha256}.jpg" and not c.duplicate
        assert store.get_bytes(c.image.bucket, c.image.key) == other

        # A gateway retrying a frame id: accepted, but not ingested a second time.
        repeat = await upload(ingest, [again])
        assert repeat.results[0].accepted and repeat.results[0].detail == "already ingested"
        await events.settle(1.5)
        assert len(events.ingested[again.frame_id]) == 1

    async with grpc.aio.insecure_channel(f"127.0.0.1:{ingest.grpc_port}") as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        got = await stub.GetFrame(ingest_pb2.GetFrameRequest(frame_id=referenced.frame_id))
        assert got.frame == c
        with urllib.request.urlopen(got.presigned_url, timeout=10) as reply:
            assert reply.read() == other
        for bad, code, reason in (("../etc/passwd", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ID"),
                                  (uid("nope"), grpc.StatusCode.NOT_FOUND, "FRAME_NOT_FOUND")):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetFrame(ingest_pb2.GetFrameRequest(frame_id=bad))
            assert err.value.code() == code and error_info(err.value).reason == reason


async def dead_letters(stack, topic: str, group: str, frame_id: str, timeout: float = 30.0) -> list[dict[str, str]]:
    """Headers of the records `group` dead-lettered from `topic` whose value names `frame_id`."""
    dlq = event_type(FrameCaptured).dlq_topic
    await ensure_topics(stack, [dlq])
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [TopicPartition(dlq, p) for p in consumer.partitions_for_topic(dlq) or ()]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        found: list[dict[str, str]] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while not found and (left := deadline - asyncio.get_running_loop().time()) > 0:
            for records in (await consumer.getmany(timeout_ms=int(min(left, 0.5) * 1000))).values():
                for record in records:
                    headers = {k: v.decode() for k, v in record.headers}
                    if (frame_id.encode() in (record.value or b"") and headers.get("dlq_topic") == topic
                            and headers.get("dlq_consumer_group") == group):
                        found.append(headers)
        return found
    finally:
        await consumer.stop()


async def test_frames_published_by_kcat_as_json_are_ingested(ingest, stack, line, kcat, tmp_path):
    """A gateway with nothing but kcat: the protobuf JSON mapping plus CloudEvents headers."""
    image = jpeg(seed=31)
    topic = event_type(FrameCaptured).topic
    frame_id = uid("f")
    captured_at = datetime.now(UTC).replace(microsecond=0)
    # Written by hand, as a gateway in any language would (README "Publishing frames from a gateway").
    document = {
        "frameId": frame_id, "lineId": line, "cameraId": "cam-7", "gatewayId": "gw-kcat",
        "capturedAt": captured_at.isoformat().replace("+00:00", "Z"), "contentType": "image/jpeg",
        "inlineImage": base64.b64encode(image).decode(), "attributes": {"shift": "night"},
    }
    value = tmp_path / "frame.json"
    value.write_text(json.dumps(document))
    headers = {
        "ce_specversion": "1.0", "ce_id": uid("kcat"), "ce_source": "gateway/gw-kcat",
        "ce_type": "lineloop.v1.FrameCaptured", "content-type": "application/json",
    }
    async with EventReader(stack) as events:
        await kcat.produce(stack.kafka_bootstrap, topic, value, key="cam-7", headers=headers)
        await events.wait_for([frame_id])

    assert frame_id not in events.rejected, events.rejected.get(frame_id)
    (ingested,) = events.ingested[frame_id]
    sha = hashlib.sha256(image).hexdigest()
    assert (ingested.line_id, ingested.camera_id, ingested.gateway_id) == (line, "cam-7", "gw-kcat")
    assert ingested.captured_at.ToDatetime(tzinfo=UTC) == captured_at
    assert ingested.image == ObjectRef(bucket="lineloop-frames", key=f"{sha[:2]}/{sha}.jpg", sha256=sha,
                                       size_bytes=len(image))
    assert (ingested.content_type, ingested.width, ingested.height) == ("image/jpeg", 64, 64)
    assert dict(ingested.attributes) == {"shift": "night"} and not ingested.duplicate
    assert object_store(stack).get_bytes(ingested.image.bucket, ingested.image.key) == image

    # The same record without the CloudEvents headers (what a key/value-only tool such as
    # `tansu cat produce` sends) is dead-lettered with the reason, not ingested.
    bare_id = uid("f")
    value.write_text(json.dumps({**document, "frameId": bare_id}))
    await kcat.produce(stack.kafka_bootstrap, topic, value, key="cam-7")
    (dead,) = await dead_letters(stack, topic, ingest.settings.consumer_group, bare_id)
    assert dead["dlq_reason"] == "missing_header" and "ce_specversion" in dead["dlq_detail"]


def bad_frames(stack, line: str) -> list[tuple[object, int]]:
    good = jpeg(seed=21)
    store = object_store(stack)
    stored = store.put_bytes("lineloop-frames", f"uploads/{uid('u')}.jpg", good, "image/jpeg")
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    return [
        (frame(good[: len(good) // 3], line=line), R.REJECT_REASON_UNDECODABLE_IMAGE),
        (frame(png_header_only(20000, 20000), line=line), R.REJECT_REASON_IMAGE_TOO_LARGE),
        (frame(line=line, image_ref=ObjectRef(bucket=stored.bucket, key=stored.key, sha256="0" * 64)),
         R.REJECT_REASON_SHA256_MISMATCH),
        (frame(good, line=line, frame_id=f"../{uid('x')}"), R.REJECT_REASON_INVALID_ID),
        (frame(good, line=line, camera="cam/../../1"), R.REJECT_REASON_INVALID_ID),
        (frame(good, line=line, captured_at=_ts(datetime.now(UTC) + timedelta(hours=2))),
         R.REJECT_REASON_CAPTURE_TIME_IN_FUTURE),
        (frame(line=line, image_ref=ObjectRef(bucket="lineloop-frames", key=f"uploads/{uid('gone')}.jpg",
                                              sha256=stored.sha256)), R.REJECT_REASON_IMAGE_NOT_FOUND),
        (frame(gif.getvalue(), line=line), R.REJECT_REASON_UNSUPPORTED_FORMAT),
        (frame(line=line), R.REJECT_REASON_MISSING_IMAGE),
    ]


def _ts(when: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when)
    return ts


def rejections(reason: int) -> float:
    """lineloop_rejections_total{service="ingest", reason=...} as /metrics serves it."""
    wanted = {"service": "ingest", "reason": R.Name(reason)}
    return sum(
        sample.value
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name == "lineloop_rejections_total" and wanted.items() <= sample.labels.items()
    )


async def test_each_bad_frame_is_rejected_with_its_reason_and_ingest_keeps_going(ingest, stack, line):
    over_kafka, over_grpc = bad_frames(stack, line), bad_frames(stack, line)
    before = {reason: rejections(reason) for _, reason in over_kafka}
    after_good = frame(jpeg(seed=22), line=line)
    async with EventReader(stack) as events:
        await publish(stack, [f for f, _ in over_kafka] + [after_good])
        response = await upload(ingest, [f for f, _ in over_grpc])
        await events.wait_for([f.frame_id for f, _ in over_kafka + over_grpc] + [after_good.frame_id])
    for f, reason in over_kafka + over_grpc:
        (rejected,) = events.rejected[f.frame_id]
        assert (rejected.reason, rejected.line_id) == (reason, line), (R.Name(reason), rejected.detail)
        assert rejected.detail and f.frame_id not in events.ingested
    by_kafka = {f.frame_id: r for f, r in over_kafka}
    assert all(events.rejected[fid][0].source_event_id for fid in by_kafka)
    assert [(r.accepted, r.reason) for r in response.results] == [(False, reason) for _, reason in over_grpc]
    assert response.rejected == len(over_grpc)
    assert "400000000 pixels" in events.rejected[over_kafka[1][0].frame_id][0].detail
    # Nothing else was affected: the good frame behind them went through.
    assert len(events.ingested[after_good.frame_id]) == 1
    for reason in {r for _, r in over_kafka}:
        expected = 2 * sum(1 for _, r in over_kafka if r == reason)
        assert rejections(reason) - before[reason] == expected, R.Name(reason)
