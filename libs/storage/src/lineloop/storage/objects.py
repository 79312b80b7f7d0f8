"""S3 object storage through the minio client: content-addressed frames, artifacts.

The minio client is synchronous and thread-safe; `ObjectStore.aio` gives the
same operations as coroutines (run in worker threads) for services on an event
loop. Every failure surfaces as an `ObjectStoreError` subclass.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.error import MinioException, S3Error

from lineloop.v1.common_pb2 import ObjectRef

_log = logging.getLogger(__name__)

# Stored as the user metadata header x-amz-meta-sha256 on every object we write.
SHA256_METADATA = "sha256"
_SHA256_HEADER = f"x-amz-meta-{SHA256_METADATA}"

_NOT_FOUND_CODES = {"NoSuchKey", "ResourceNotFound"}
_ACCESS_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
_BUCKET_TAKEN_CODES = {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}


class ObjectStoreError(Exception):
    """Any failure of the object store; `code` is the S3 error code when there is one."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class ObjectNotFound(ObjectStoreError):
    """The bucket exists but holds no object under that key."""

    def __init__(self, bucket: str, key: str) -> None:
        super().__init__(f"no object {key!r} in bucket {bucket!r}", code="NoSuchKey")
        self.bucket = bucket
        self.key = key


class BucketNotFound(ObjectStoreError):
    """The bucket does not exist (see `ObjectStore.ensure_buckets`)."""

    def __init__(self, bucket: str) -> None:
        super().__init__(f"no bucket {bucket!r}", code="NoSuchBucket")
        self.bucket = bucket


class AccessDenied(ObjectStoreError):
    """The store refused the credentials or the operation."""


class ObjectStoreUnavailable(ObjectStoreError):
    """The store could not be reached or kept failing after retries."""


class Sha256Mismatch(ObjectStoreError):
    """Content does not hash to the sha256 it was expected (or stored) to have."""

    def __init__(self, *, expected: str, actual: str, bucket: str, key: str) -> None:
        super().__init__(f"sha256 mismatch for {bucket}/{key}: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual
        self.bucket = bucket
        self.key = key


@dataclass(frozen=True)
class StoredObject:
    """An object as written: where it is, its sha256 and size.

    `existed` is True when a content-addressed put found the object already there
    and did not write it again.
    """

    bucket: str
    key: str
    sha256: str
    size_bytes: int
    existed: bool = False

    def to_proto(self) -> ObjectRef:
        return ObjectRef(bucket=self.bucket, key=self.key, sha256=self.sha256, size_bytes=self.size_bytes)


@dataclass(frozen=True)
class ObjectInfo:
    """What `stat` reports; `sha256` is None for objects not written by lineloop."""

    bucket: str
    key: str
    size_bytes: int
    etag: str
    content_type: str | None
    last_modified: datetime | None
    sha256: str | None


@dataclass(frozen=True)
class ListedObject:
    """One entry of a bucket listing: enough to judge an object's age without a stat."""

    bucket: str
    key: str
    size_bytes: int
    last_modified: datetime | None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content_key(sha256: str, ext: str) -> str:
    """`<sha256[:2]>/<sha256>.<ext>`, the key of a content-addressed object.

    Raises:
        ValueError: `ext` is not a plain extension such as "jpg" (a leading dot is allowed).
    """
    ext = ext.removeprefix(".")
    if not (ext.isascii() and ext.isalnum()):
        raise ValueError(f"file extension must be letters and digits, like 'jpg', got {ext!r}")
    return f"{sha256[:2]}/{sha256}.{ext}"


class _Retry(urllib3.Retry):
    """A certificate that does not verify fails the same way every time: give up at once."""

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        if isinstance(error, urllib3.exceptions.SSLError):
            raise urllib3.exceptions.MaxRetryError(_pool, url, error) from error
        return super().increment(method, url, response, error, _pool, _stacktrace)


class ObjectStore:
    """An S3 bucket client (MinIO, SeaweedFS, AWS) for lineloop's objects."""

    def __init__(self, client: Minio) -> None:
        self.client = client
        self.aio = AsyncObjectStore(self)

    @classmethod
    def from_url(
        cls,
        endpoint_url: str,
        access_key: str,
        secret_key: str,
        region: str = "us-east-1",
        *,
        max_connections: int = 32,
        timeout_s: float = 30.0,
        ca_file: Path | str | None = None,
    ) -> ObjectStore:
        """Connects to an S3 endpoint such as `http://127.0.0.1:8333`.

        Args:
            endpoint_url: `http://` or `https://` host and port, no path.
            access_key: S3 access key id.
            secret_key: S3 secret key.
            region: Signing region; giving it spares a bucket-location request.
            max_connections: Connections kept per host. It bounds how many calls
                run at once without opening throwaway connections, so keep it at
                or above the number of threads using the store.
            timeout_s: Connect and read timeout of one HTTP request.
            ca_file: PEM bundle of the CA(s) that sign an https endpoint's certificate
                (a plant's own CA); None: the system's trusted CAs. The certificate and
                its host name are always verified.

        Raises:
            ValueError: The URL is not a bare http(s) endpoint, or a CA file is given
                for plain http.
        """
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise ValueError(f"S3 endpoint must look like http://host:port, got {endpoint_url!r}")
        if ca_file is not None and parts.scheme != "https":
            # Fail closed: a CA configured for a plaintext endpoint means the operator expects TLS.
            raise ValueError(f"an S3 CA file ({ca_file}) is set but the endpoint {endpoint_url!r} is not https")
        http = urllib3.PoolManager(
            cert_reqs="CERT_REQUIRED",
            ca_certs=str(ca_file) if ca_file is not None else None,
            maxsize=max_connections,
            timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
            # Same retry policy as minio's own default client, but a TLS failure is not retried.
            retries=_Retry(total=5, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        client = Minio(
            parts.netloc,
            access_key=access_key,
            secret_key=secret_key,
            secure=parts.scheme == "https",
            region=region,
            http_client=http,
        )
        return cls(client)

    def ensure_buckets(self, names: Iterable[str]) -> None:
        """Creates the buckets that do not exist yet; safe to run from many replicas."""
        for name in names:
            with _mapped_errors(name):
                if self.client.bucket_exists(name):
                    continue
                try:
                    self.client.make_bucket(name)
                except S3Error as exc:
                    if exc.code not in _BUCKET_TAKEN_CODES:
                        raise

    def put_content_addressed(
        self,
        bucket: str,
        data: bytes,
        ext: str,
        content_type: str,
        expected_sha256: str | None = None,
    ) -> StoredObject:
        """Stores `data` under `<sha256[:2]>/<sha256>.<ext>`, once.

        When an intact object is already there it is left alone and the result
        says `existed=True`. One whose size or recorded sha256 is wrong is
        rewritten: the key promises this content.

        Raises:
            Sha256Mismatch: `data` does not hash to `expected_sha256`; nothing is written.
            ValueError: `ext` is not a plain extension.
        """
        digest = sha256_hex(data)
        key = content_key(digest, ext)
        if expected_sha256 is not None and expected_sha256.lower() != digest:
            raise Sha256Mismatch(expected=expected_sha256, actual=digest, bucket=bucket, key=key)
        try:
            info = self.stat(bucket, key)
        except ObjectNotFound:
            info = None
        if info is not None:
            if info.size_bytes == len(data) and info.sha256 in (None, digest):
                return StoredObject(bucket, key, digest, len(data), existed=True)
            _log.warning(
                "rewriting damaged content-addressed object",
                extra={"bucket": bucket, "key": key, "stored_size": info.size_bytes, "stored_sha256": info.sha256},
            )
        self._put(bucket, key, data, content_type, digest)
        return StoredObject(bucket, key, digest, len(data))

    def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str) -> StoredObject:
        """Writes `data` under `key`, replacing what was there; records its sha256."""
        digest = sha256_hex(data)
        self._put(bucket, key, data, content_type, digest)
        return StoredObject(bucket, key, digest, len(data))

    def _put(self, bucket: str, key: str, data: bytes, content_type: str, digest: str) -> None:
        with _mapped_errors(bucket, key):
            self.client.put_object(
                bucket,
                key,
                io.BytesIO(data),
                len(data),
                content_type=content_type,
                metadata={SHA256_METADATA: digest},
            )

    def get_bytes(self, bucket: str, key: str, expected_sha256: str | None = None) -> bytes:
        """Reads a whole object and checks it against `expected_sha256`, else the recorded one.

        Raises:
            ObjectNotFound, BucketNotFound: Nothing there.
            Sha256Mismatch: The content does not hash as expected.
        """
        with _mapped_errors(bucket, key):
            response = self.client.get_object(bucket, key)
            try:
                data = response.read()
                recorded = response.headers.get(_SHA256_HEADER)
            finally:
                response.close()
                response.release_conn()
        expected = expected_sha256 or recorded
        if expected is not None:
            actual = sha256_hex(data)
            if actual != expected.lower():
                raise Sha256Mismatch(expected=expected, actual=actual, bucket=bucket, key=key)
        return data

    def exists(self, bucket: str, key: str) -> bool:
        """True when the object is there; a missing bucket raises `BucketNotFound`."""
        try:
            self.stat(bucket, key)
        except ObjectNotFound:
            if not self._bucket_exists(bucket):
                raise BucketNotFound(bucket) from None
            return False
        return True

    def stat(self, bucket: str, key: str) -> ObjectInfo:
        """Size, etag, content type and recorded sha256 of an object, without its data."""
        with _mapped_errors(bucket, key):
            obj = self.client.stat_object(bucket, key)
        return ObjectInfo(
            bucket=bucket,
            key=key,
            size_bytes=obj.size or 0,
            etag=obj.etag or "",
            content_type=obj.content_type,
            last_modified=obj.last_modified,
            sha256=(obj.metadata or {}).get(_SHA256_HEADER),
        )

    def list_keys(self, bucket: str, prefix: str = "") -> Iterator[str]:
        """Keys under `prefix` (all levels), in lexical order, fetched page by page."""
        with _mapped_errors(bucket):
            for obj in self.client.list_objects(bucket, prefix=prefix or None, recursive=True):
                yield obj.object_name

    def list_objects(self, bucket: str, prefix: str = "") -> Iterator[ListedObject]:
        """Objects under `prefix` (all levels) with size and last-modified time, page by page."""
        with _mapped_errors(bucket):
            for obj in self.client.list_objects(bucket, prefix=prefix or None, recursive=True):
                yield ListedObject(bucket, obj.object_name, obj.size or 0, obj.last_modified)

    def presigned_get(self, bucket: str, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        """A URL anyone can GET the object from until `expires` has passed (signed locally)."""
        with _mapped_errors(bucket, key):
            return self.client.presigned_get_object(bucket, key, expires=expires)

    def presigned_put(self, bucket: str, key: str, expires: timedelta) -> str:
        """A URL anyone can PUT this one object to until `expires` has passed (signed locally)."""
        with _mapped_errors(bucket, key):
            return self.client.presigned_put_object(bucket, key, expires=expires)

    def delete(self, bucket: str, key: str) -> None:
        """Removes the object; removing one that is not there is not an error (S3 semantics)."""
        with _mapped_errors(bucket, key):
            self.client.remove_object(bucket, key)

    def _bucket_exists(self, bucket: str) -> bool:
        with _mapped_errors(bucket):
            return self.client.bucket_exists(bucket)


class AsyncObjectStore:
    """`ObjectStore`'s operations as coroutines, each run in a worker thread."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    async def ensure_buckets(self, names: Iterable[str]) -> None:
        await asyncio.to_thread(self._store.ensure_buckets, list(names))

    async def put_content_addressed(
        self,
        bucket: str,
        data: bytes,
        ext: str,
        content_type: str,
        expected_sha256: str | None = None,
    ) -> StoredObject:
        return await asyncio.to_thread(
            self._store.put_content_addressed, bucket, data, ext, content_type, expected_sha256
        )

    async def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str) -> StoredObject:
        return await asyncio.to_thread(self._store.put_bytes, bucket, key, data, content_type)

    async def get_bytes(self, bucket: str, key: str, expected_sha256: str | None = None) -> bytes:
        return await asyncio.to_thread(self._store.get_bytes, bucket, key, expected_sha256)

    async def exists(self, bucket: str, key: str) -> bool:
        return await asyncio.to_thread(self._store.exists, bucket, key)

    async def stat(self, bucket: str, key: str) -> ObjectInfo:
        return await asyncio.to_thread(self._store.stat, bucket, key)

    async def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """All keys under `prefix` as one list (the sync version pages lazily)."""
        return await asyncio.to_thread(lambda: list(self._store.list_keys(bucket, prefix)))

    async def presigned_get(self, bucket: str, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        return await asyncio.to_thread(self._store.presigned_get, bucket, key, expires)

    async def presigned_put(self, bucket: str, key: str, expires: timedelta) -> str:
        return await asyncio.to_thread(self._store.presigned_put, bucket, key, expires)

    async def delete(self, bucket: str, key: str) -> None:
        await asyncio.to_thread(self._store.delete, bucket, key)


@contextmanager
def _mapped_errors(bucket: str, key: str | None = None) -> Iterator[None]:
    """Turns minio and urllib3 exceptions into `ObjectStoreError`s naming bucket and key."""
    where = f"{bucket}/{key}" if key is not None else bucket
    try:
        yield
    except S3Error as exc:
        if exc.code == "NoSuchBucket":
            raise BucketNotFound(bucket) from exc
        if exc.code in _NOT_FOUND_CODES and key is not None:
            raise ObjectNotFound(bucket, key) from exc
        error = AccessDenied if exc.code in _ACCESS_CODES else ObjectStoreError
        raise error(f"{exc.code} on {where}: {exc.message}", code=exc.code) from exc
    except (urllib3.exceptions.HTTPError, MinioException) as exc:
        if isinstance(exc, urllib3.exceptions.SSLError) or isinstance(getattr(exc, "reason", None), urllib3.exceptions.SSLError):
            raise ObjectStoreUnavailable(
                f"object store on {where}: TLS failed ({getattr(exc, 'reason', exc)}); LINELOOP_S3_CA_FILE must name "
                "the CA that signs the endpoint's certificate, for the host name in LINELOOP_S3_ENDPOINT") from exc
        raise ObjectStoreUnavailable(f"object store failed on {where}: {exc}") from exc
