"""The embedded S3 store keeps objects byte for byte and refuses wrong credentials."""

import hashlib
import io
import os

import pytest
from minio import Minio
from minio.error import S3Error

from lineloop.stack.config import BUCKETS


def test_buckets_exist(stack):
    client = stack.s3_client()
    assert {b.name for b in client.list_buckets()} >= set(BUCKETS)


def test_object_round_trip_keeps_sha256(stack):
    client = stack.s3_client()
    payload = os.urandom(3 * 1024 * 1024 + 17)  # more than one multipart chunk
    digest = hashlib.sha256(payload).hexdigest()
    key = f"{digest[:2]}/{digest}.bin"
    client.put_object("lineloop-frames", key, io.BytesIO(payload), len(payload))
    response = client.get_object("lineloop-frames", key)
    try:
        fetched = response.read()
    finally:
        response.close()
        response.release_conn()
    assert hashlib.sha256(fetched).hexdigest() == digest
    # Other tests share the bucket: list by the full key prefix.
    assert [o.object_name for o in client.list_objects("lineloop-frames", prefix=f"{digest[:2]}/{digest}")] == [key]


def test_wrong_secret_is_refused(stack):
    intruder = Minio(stack.s3_endpoint.removeprefix("http://"), access_key=stack.s3_access_key,
                     secret_key="not-the-secret", secure=False)
    with pytest.raises(S3Error) as refused:
        intruder.list_objects("lineloop-frames").__next__()
    assert refused.value.code in ("SignatureDoesNotMatch", "AccessDenied", "InvalidAccessKeyId")
