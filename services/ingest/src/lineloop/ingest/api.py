"""gRPC IngestService: UploadFrames (client streaming) and GetFrame."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
from opentelemetry import metrics
from sqlalchemy.exc import IntegrityError

from lineloop.bus import Bus
from lineloop.ingest import state
from lineloop.ingest.pipeline import SAFE_ID, SHA256_HEX, Pipeline, Prepared, Recorded, Refused
from lineloop.ingest.settings import IngestSettings
from lineloop.runtime import abort
from lineloop.storage.objects import AsyncObjectStore, ObjectStoreError
from lineloop.storage.sql import Database, utcnow
from lineloop.v1 import ingest_pb2, ingest_pb2_grpc
from lineloop.v1.common_pb2 import ObjectRef
from lineloop.v1.events_pb2 import RejectReason
from lineloop.vision.decode import SUPPORTED_FORMATS

log = logging.getLogger(__name__)

SUPPORTED_EXTENSIONS = dict(SUPPORTED_FORMATS.values())  # content type -> file extension
UPLOAD_PREFIX = "uploads/"  # gateways' staged images (RequestUploads); content keys are ingest's alone
uploads_granted = metrics.get_meter("lineloop.ingest").create_counter(
    "lineloop.ingest.uploads_granted", unit="{image}",
    description="Images a gateway was given a presigned PUT for (or told were already stored): RequestUploads.",
)


class IngestApi(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(
        self, settings: IngestSettings, pipeline: Pipeline, db: Database, bus: Bus, objects: AsyncObjectStore,
        uploads: AsyncObjectStore | None = None,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.db = db
        self.bus = bus
        self.objects = objects
        self.uploads = uploads or objects  # signs gateways' PUTs for the host they reach the store at

    async def RequestUploads(
        self, request: ingest_pb2.RequestUploadsRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.RequestUploadsResponse:
        """A presigned PUT per image: the gateway needs no S3 keys.

        Each PUT goes to a staging key of its own (`uploads/<sha256>/<random>.<ext>`), never to a
        content key: content keys are written by ingest alone, after it checked the bytes against
        their sha256, so no gateway (nor a URL it kept) can overwrite or pre-empt stored frames.
        Ingest copies a staged image under its content key when it ingests the frame; the staged
        copy is then a staged upload the reconcile job deletes after its grace period. An image the
        index already holds needs no upload: the answer is its stored reference."""
        if len(request.images) > self.settings.max_uploads_per_request:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "TOO_MANY_UPLOADS",
                        f"{len(request.images)} images in one request; at most {self.settings.max_uploads_per_request}",
                        service="ingest")
        for i, image in enumerate(request.images):
            problem = _upload_problem(image, self.settings.max_image_bytes)
            if problem:
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_UPLOAD", f"images[{i}]: {problem}",
                            service="ingest")
        bucket = self.settings.frames_bucket
        ttl = timedelta(seconds=self.settings.upload_url_ttl_s)
        expires = utcnow() + ttl
        reply = ingest_pb2.RequestUploadsResponse()
        for image in request.images:
            sha = image.sha256.lower()
            stored = await asyncio.to_thread(self._stored_image, sha)  # off the event loop: up to 256 lookups
            if stored is not None:
                reply.uploads.add(image_ref=stored, already_stored=True)
                continue
            key = f"{UPLOAD_PREFIX}{sha}/{uuid.uuid4().hex}.{SUPPORTED_EXTENSIONS[image.content_type]}"
            upload = reply.uploads.add(image_ref=ObjectRef(bucket=bucket, key=key, sha256=sha, size_bytes=image.size_bytes))
            upload.expires_at.FromDatetime(expires)
            try:
                upload.url = await self.uploads.presigned_put(bucket, key, ttl)
            except ObjectStoreError as exc:
                await abort(context, grpc.StatusCode.UNAVAILABLE, "OBJECT_STORE_UNAVAILABLE", str(exc), service="ingest")
        uploads_granted.add(len(request.images))
        return reply

    def _stored_image(self, sha: str):
        with self.db.session() as session:
            return state.stored_image(session, sha)

    async def UploadFrames(
        self, request_iterator: AsyncIterator[ingest_pb2.UploadFrameRequest], context: grpc.aio.ServicerContext
    ) -> ingest_pb2.UploadFramesResponse:
        """Frames are prepared as they stream in (several at once) and recorded in order."""
        window = asyncio.Semaphore(self.settings.max_concurrent_frames)
        in_flight: asyncio.Queue[asyncio.Task | None] = asyncio.Queue()

        async def prepare(frame):
            try:
                return await self.pipeline.prepare(frame)
            finally:
                window.release()

        async def read() -> None:
            try:
                async for request in request_iterator:
                    await window.acquire()
                    await in_flight.put(asyncio.create_task(prepare(request.frame), name=request.frame.frame_id[:128]))
            finally:
                await in_flight.put(None)

        reader = asyncio.create_task(read())
        response = ingest_pb2.UploadFramesResponse()
        try:
            while (task := await in_flight.get()) is not None:
                try:
                    outcome = await task
                except ObjectStoreError as exc:
                    # Frames before this one are recorded; resending them all is safe (same frame ids).
                    await abort(context, grpc.StatusCode.UNAVAILABLE, "OBJECT_STORE_UNAVAILABLE",
                                f"frame {task.get_name()}: object store failed: {exc}", service="ingest")
                recorded = await self._record(outcome)
                response.results.append(_result(outcome, recorded))
            await reader  # a broken client stream surfaces here
        finally:
            reader.cancel()
            # A client that went away gets no answer: what was not recorded is its to resend.
            while not in_flight.empty():
                if (task := in_flight.get_nowait()) is not None:
                    task.cancel()
            self.bus.relay.wake()
        for result in response.results:
            if not result.accepted:
                response.rejected += 1
            else:
                response.accepted += 1
                response.duplicates += result.duplicate
        return response

    async def _record(self, outcome: Prepared | Refused) -> Recorded:
        for attempt in (1, 2):
            try:
                async with self.db.write() as session:
                    recorded = self.pipeline.record(session, outcome, path="grpc")
                    event = recorded.ingested or recorded.rejected
                    if event is not None:
                        self.bus.add_to_outbox(session, event)
                return recorded
            except IntegrityError:
                # Another replica indexed the same frame or image meanwhile: read it again.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def GetFrame(
        self, request: ingest_pb2.GetFrameRequest, context: grpc.aio.ServicerContext
    ) -> ingest_pb2.Frame:
        if not SAFE_ID.match(request.frame_id) or ".." in request.frame_id:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ID",
                        f"frame_id {request.frame_id[:80]!r} is not a valid frame id", service="ingest")
        with self.db.session() as session:
            frame = state.find_frame(session, request.frame_id)
        if frame is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, "FRAME_NOT_FOUND",
                        f"no frame {request.frame_id!r} has been ingested", service="ingest",
                        frame_id=request.frame_id)
        url = await self.objects.presigned_get(
            frame.image.bucket, frame.image.key, timedelta(seconds=self.settings.presigned_url_ttl_s)
        )
        return ingest_pb2.Frame(frame=frame, presigned_url=url)


def _upload_problem(image: ingest_pb2.ImageToUpload, max_bytes: int) -> str:
    if not SHA256_HEX.match(image.sha256.lower()):
        return f"sha256 {image.sha256[:80]!r} is not 64 hex digits"
    if image.content_type not in SUPPORTED_EXTENSIONS:
        return f"content_type {image.content_type[:40]!r} is not one of {', '.join(sorted(SUPPORTED_EXTENSIONS))}"
    if not 0 < image.size_bytes <= max_bytes:
        return f"size_bytes {image.size_bytes} is not within 1..{max_bytes}"
    return ""


def _result(outcome: Prepared | Refused, recorded: Recorded) -> ingest_pb2.UploadResult:
    frame_id = outcome.frame.frame_id
    if recorded.rejected is not None:
        return ingest_pb2.UploadResult(
            frame_id=frame_id, accepted=False, reason=recorded.rejected.reason, detail=recorded.rejected.detail
        )
    event = recorded.ingested or recorded.repeat_of
    return ingest_pb2.UploadResult(
        frame_id=frame_id, accepted=True, reason=RejectReason.REJECT_REASON_UNSPECIFIED,
        duplicate=event.duplicate, detail="already ingested" if recorded.repeat_of is not None else "",
    )
