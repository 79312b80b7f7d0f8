"""RequestUploads: a gateway sends images by reference without object-store keys. Ingest signs
a PUT under the image's content key; the gateway puts the bytes there itself; the frame that
references them is checked against its sha256 like any other."""

from __future__ import annotations

import asyncio
import hashlib

import grpc
import pytest
import urllib3

from lineloop.cli.gateway import PresignedUploads
from lineloop.ingest.testing import (
    EventReader, frame, ingest_settings, jpeg, object_store, publish, running_ingest, uid,
)
from lineloop.v1 import ingest_pb2, ingest_pb2_grpc
from lineloop.v1.events_pb2 import RejectReason


@pytest.fixture
async def ingest(stack, tmp_path):
    async with running_ingest(ingest_settings(stack, tmp_path / "ingest.db")) as service:
        yield service


def wanted(image: bytes, content_type: str = "image/jpeg", **fields) -> ingest_pb2.ImageToUpload:
    values = dict(sha256=hashlib.sha256(image).hexdigest(), size_bytes=len(image), content_type=content_type)
    return ingest_pb2.ImageToUpload(**{**values, **fields})


async def test_a_gateway_without_store_keys_uploads_by_reference_and_the_frame_is_ingested(stack, ingest):
    line, image = uid("line"), jpeg(seed=401)
    # PresignedUploads holds an ingest address and nothing of the store's: no keys.
    uploads = PresignedUploads(f"127.0.0.1:{ingest.grpc_port}")
    try:
        staged = await asyncio.to_thread(uploads, image, "image/jpeg")
        captured = frame(line=line)
        captured.image_ref.CopyFrom(staged)
        async with EventReader(stack) as events:
            await publish(stack, [captured])
            await events.wait_for([captured.frame_id])
        stored = await asyncio.to_thread(uploads, image, "image/jpeg")  # in the index now: no second PUT
    finally:
        uploads.close()
    # Staged under a key of its own, never a content key: those are ingest's alone.
    assert staged.key.startswith("uploads/") and staged.sha256 == hashlib.sha256(image).hexdigest()
    (ingested,) = events.ingested[captured.frame_id]
    assert ingested.image.sha256 == staged.sha256 and not ingested.image.key.startswith("uploads/")
    assert (stored.bucket, stored.key, stored.sha256) == (ingested.image.bucket, ingested.image.key, ingested.image.sha256)
    assert object_store(stack).get_bytes(stored.bucket, stored.key) == image


async def test_bytes_put_under_another_images_key_are_refused_when_the_frame_arrives(stack, ingest):
    line, image, forged = uid("line"), jpeg(seed=402), jpeg(seed=403)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ingest.grpc_port}") as channel:
        reply = await ingest_pb2_grpc.IngestServiceStub(channel).RequestUploads(
            ingest_pb2.RequestUploadsRequest(images=[wanted(image)]))
    (upload,) = reply.uploads
    assert upload.url and not upload.already_stored and upload.expires_at.seconds > 0
    put = await asyncio.to_thread(urllib3.request, "PUT", upload.url, body=forged, headers={"Content-Type": "image/jpeg"})
    assert put.status == 200
    captured = frame(line=line)
    captured.image_ref.CopyFrom(upload.image_ref)
    async with EventReader(stack) as events:
        await publish(stack, [captured])
        await events.wait_for([captured.frame_id])
    (rejected,) = events.rejected[captured.frame_id]
    assert rejected.reason == RejectReason.REJECT_REASON_SHA256_MISMATCH, rejected.detail
    # The forgery poisoned nothing: the image's own upload gets a fresh staging key and goes in.
    uploads = PresignedUploads(f"127.0.0.1:{ingest.grpc_port}")
    try:
        honest = frame(line=line)
        honest.image_ref.CopyFrom(await asyncio.to_thread(uploads, image, "image/jpeg"))
    finally:
        uploads.close()
    assert honest.image_ref.key != upload.image_ref.key
    async with EventReader(stack) as events:
        await publish(stack, [honest])
        await events.wait_for([honest.frame_id])
    assert honest.frame_id in events.ingested, events.rejected.get(honest.frame_id)


@pytest.mark.parametrize(("images", "complaint"), [
    ([wanted(b"x", sha256="not-a-sha")], "is not 64 hex digits"),
    ([wanted(b"x", content_type="image/gif")], "is not one of image/jpeg, image/png"),
    ([wanted(b"x", size_bytes=0)], "is not within 1.."),
    ([wanted(b"x", size_bytes=17 * 1024 * 1024)], "is not within 1.."),
    ([wanted(b"x")] * 257, "at most 256"),
])
async def test_requests_the_store_should_not_sign_are_refused_with_the_reason(ingest, images, complaint):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ingest.grpc_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await ingest_pb2_grpc.IngestServiceStub(channel).RequestUploads(ingest_pb2.RequestUploadsRequest(images=images))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert complaint in refused.value.details()
