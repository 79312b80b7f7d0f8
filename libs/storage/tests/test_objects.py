"""lineloop.storage.objects against the real S3 store of the embedded test stack."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import urllib.error
import urllib.request
import uuid
from datetime import timedelta

import pytest
import urllib3
from minio import Minio

from lineloop.storage.objects import (
    AccessDenied,
    BucketNotFound,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreUnavailable,
    Sha256Mismatch,
    content_key,
    sha256_hex,
)
from lineloop.v1.common_pb2 import ObjectRef


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def store(stack) -> ObjectStore:
    return ObjectStore.from_url(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key)


@pytest.fixture
def bucket(store) -> str:
    name = f"test-{uuid.uuid4().hex[:12]}"
    store.ensure_buckets([name])
    return name


JPEG = b"\xff\xd8\xff\xe0" + os.urandom(2048) + b"\xff\xd9"


def test_round_trip_is_verified_against_the_recorded_sha256(store, bucket):
    stored = store.put_bytes(bucket, "manifests/v1/manifest.jsonl", b'{"frame": 1}\n', "application/x-ndjson")
    assert stored.sha256 == sha256_hex(b'{"frame": 1}\n') and stored.size_bytes == 13

    assert store.get_bytes(bucket, stored.key) == b'{"frame": 1}\n'
    assert store.get_bytes(bucket, stored.key, expected_sha256=stored.sha256) == b'{"frame": 1}\n'
    info = store.stat(bucket, stored.key)
    assert (info.size_bytes, info.sha256, info.content_type) == (13, stored.sha256, "application/x-ndjson")


def test_get_refuses_content_that_does_not_hash_as_expected(store, bucket):
    stored = store.put_bytes(bucket, "a.bin", b"actual bytes", "application/octet-stream")
    other = sha256_hex(b"something else")
    with pytest.raises(Sha256Mismatch) as caught:
        store.get_bytes(bucket, stored.key, expected_sha256=other)
    assert (caught.value.expected, caught.value.actual) == (other, stored.sha256)


def test_content_addressed_put_writes_once(store, bucket):
    first = store.put_content_addressed(bucket, JPEG, "jpg", "image/jpeg")
    digest = sha256_hex(JPEG)
    assert first.key == f"{digest[:2]}/{digest}.jpg" == content_key(digest, ".jpg")
    assert not first.existed
    written = store.stat(bucket, first.key)

    time.sleep(1.1)  # Last-Modified has one-second resolution: a rewrite would show.
    second = store.put_content_addressed(bucket, JPEG, "jpg", "image/jpeg", expected_sha256=digest)

    assert second.existed
    assert (second.key, second.sha256, second.size_bytes) == (first.key, digest, len(JPEG))
    assert store.stat(bucket, first.key).last_modified == written.last_modified
    assert list(store.list_keys(bucket)) == [first.key]
    assert store.get_bytes(bucket, first.key, expected_sha256=digest) == JPEG


def test_content_addressed_put_repairs_a_damaged_object(store, bucket):
    digest = sha256_hex(JPEG)
    key = content_key(digest, "jpg")
    store.put_bytes(bucket, key, JPEG[:100], "image/jpeg")  # truncated upload under the right key

    repaired = store.put_content_addressed(bucket, JPEG, "jpg", "image/jpeg")

    assert not repaired.existed
    assert store.get_bytes(bucket, key, expected_sha256=digest) == JPEG


def test_expected_sha256_mismatch_is_refused_and_nothing_written(store, bucket):
    wrong = sha256_hex(b"another frame")
    with pytest.raises(Sha256Mismatch) as caught:
        store.put_content_addressed(bucket, JPEG, "jpg", "image/jpeg", expected_sha256=wrong)
    assert caught.value.expected == wrong and caught.value.actual == sha256_hex(JPEG)
    assert list(store.list_keys(bucket)) == []


def test_stored_object_converts_to_object_ref(store, bucket):
    stored = store.put_content_addressed(bucket, JPEG, "jpg", "image/jpeg")
    assert stored.to_proto() == ObjectRef(bucket=bucket, key=stored.key, sha256=stored.sha256, size_bytes=len(JPEG))


def test_missing_objects_and_buckets_are_specific_errors(store, bucket):
    missing_bucket = f"missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ObjectNotFound, match="no object 'nope.jpg'") as caught:
        store.get_bytes(bucket, "nope.jpg")
    assert (caught.value.bucket, caught.value.key) == (bucket, "nope.jpg")
    with pytest.raises(ObjectNotFound):
        store.stat(bucket, "nope.jpg")
    assert not store.exists(bucket, "nope.jpg")
    with pytest.raises(BucketNotFound):
        store.get_bytes(missing_bucket, "nope.jpg")
    with pytest.raises(BucketNotFound):
        store.exists(missing_bucket, "nope.jpg")
    # (A put into a missing bucket is not asserted: SeaweedFS creates the bucket, MinIO refuses.)


def test_wrong_secret_is_access_denied(stack, bucket):
    intruder = ObjectStore.from_url(stack.s3_endpoint, stack.s3_access_key, "not-the-secret")
    with pytest.raises(AccessDenied):
        intruder.put_bytes(bucket, "k", b"x", "text/plain")


def test_unreachable_store_is_unavailable():
    # Nothing listens on the port; no retries, so it fails at once rather than after the backoff.
    client = Minio(f"127.0.0.1:{free_port()}", "key", "secret", secure=False, http_client=urllib3.PoolManager(retries=0))
    dead = ObjectStore(client)
    with pytest.raises(ObjectStoreUnavailable):
        dead.stat("any", "key")


@pytest.mark.parametrize("ext", ["", "j/pg", "jpg?x", "../x"])
def test_bad_extension_is_refused_before_writing(store, bucket, ext):
    with pytest.raises(ValueError, match="file extension must be letters and digits"):
        store.put_content_addressed(bucket, JPEG, ext, "image/jpeg")
    assert list(store.list_keys(bucket)) == []


@pytest.mark.parametrize("url", ["127.0.0.1:8333", "ftp://127.0.0.1:8333", "http://127.0.0.1:8333/bucket"])
def test_malformed_endpoint_is_refused(url):
    with pytest.raises(ValueError, match="S3 endpoint must look like"):
        ObjectStore.from_url(url, "key", "secret")


def test_ensure_buckets_is_idempotent(store):
    names = [f"idem-{uuid.uuid4().hex[:8]}", f"idem-{uuid.uuid4().hex[:8]}"]
    store.ensure_buckets(names)
    store.put_bytes(names[0], "kept", b"kept", "text/plain")
    store.ensure_buckets(names)
    assert store.get_bytes(names[0], "kept") == b"kept"


def test_list_keys_by_prefix_and_delete(store, bucket):
    for key in ("ds/v1/manifest.jsonl", "ds/v2/manifest.jsonl", "other/x"):
        store.put_bytes(bucket, key, key.encode(), "text/plain")
    assert list(store.list_keys(bucket, "ds/")) == ["ds/v1/manifest.jsonl", "ds/v2/manifest.jsonl"]

    store.delete(bucket, "ds/v1/manifest.jsonl")
    store.delete(bucket, "ds/v1/manifest.jsonl")  # already gone: still fine
    assert list(store.list_keys(bucket)) == ["ds/v2/manifest.jsonl", "other/x"]


def test_presigned_get_serves_the_object_over_plain_http(store, bucket):
    stored = store.put_content_addressed(bucket, JPEG, "jpg", "image/jpeg")
    url = store.presigned_get(bucket, stored.key, expires=timedelta(minutes=5))
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == JPEG
        assert response.headers["Content-Type"] == "image/jpeg"
    tampered = url.replace(stored.key, content_key(sha256_hex(b"other"), "jpg"))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(tampered, timeout=10)
    assert refused.value.code == 403


async def test_async_variants_run_concurrently(store, bucket):
    frames = [os.urandom(512) for _ in range(16)]
    stored = await asyncio.gather(*(store.aio.put_content_addressed(bucket, f, "png", "image/png") for f in frames))
    assert not any(s.existed for s in stored)
    again = await store.aio.put_content_addressed(bucket, frames[0], "png", "image/png")
    assert again.existed

    read = await asyncio.gather(*(store.aio.get_bytes(bucket, s.key, s.sha256) for s in stored))
    assert read == frames
    assert sorted(await store.aio.list_keys(bucket)) == sorted(s.key for s in stored)
    assert await store.aio.exists(bucket, stored[0].key)
    assert (await store.aio.stat(bucket, stored[0].key)).sha256 == stored[0].sha256
    plain = await store.aio.put_bytes(bucket, "plain.txt", b"plain", "text/plain")
    assert plain.sha256 == sha256_hex(b"plain")
    url = await store.aio.presigned_get(bucket, "plain.txt")
    assert await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read()) == b"plain"
    await store.aio.delete(bucket, stored[0].key)
    with pytest.raises(ObjectNotFound):
        await store.aio.get_bytes(bucket, stored[0].key)
    await store.aio.ensure_buckets([bucket])
