"""The one path every frame takes, whether it came over Kafka or gRPC.

`prepare` does the slow, stateless part and may run for many frames at once:
validate, fetch or take the image, verify its sha256, decode with limits,
compute quality statistics, store it content-addressed, score it on Triton.
Decoded frames share a pixel budget: a frame reads its dimensions from the
header, then waits until its pixels fit beside those of the frames in flight,
and holds them until its full-resolution image is no longer needed.
`record` is the short database part, run in the caller's transaction: frame
index, duplicate detection, and the event to publish.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import metrics, trace
from sqlalchemy.orm import Session

from lineloop.contracts.topics import MAX_INLINE_IMAGE_BYTES
from lineloop.ingest import state
from lineloop.ingest.scoring import TritonScorer
from lineloop.ingest.settings import IngestSettings
from lineloop.runtime.cpu import available_cpus
from lineloop.storage.objects import ObjectNotFound, ObjectStore, Sha256Mismatch, StoredObject, content_key, sha256_hex
from lineloop.storage.sql import Database
from lineloop.telemetry import metrics as shared_metrics
from lineloop.v1.common_pb2 import ObjectRef, Prediction, QualityStats
from lineloop.v1.events_pb2 import FrameCaptured, FrameIngested, FrameRejected, RejectReason
from lineloop.vision import (
    SUPPORTED_CONTENT_TYPES,
    DecodedImage,
    DecodeLimits,
    Failure,
    ImageHeader,
    ImageRejected,
    OverBudget,
    PixelBudget,
    load_image,
    open_image,
    quality_stats,
)

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)
_meter = metrics.get_meter("lineloop.ingest")
frames_total = _meter.create_counter(
    "lineloop.ingest.frames", unit="{frame}",
    description="Frames through the pipeline. Attributes: path (kafka|grpc), outcome (ingested|duplicate|rejected|repeat).",
)
stage_duration = _meter.create_histogram(
    "lineloop.ingest.stage.duration", unit="s", description="Time per pipeline stage. Attributes: stage.",
    explicit_bucket_boundaries_advisory=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
)
decode_pixels = _meter.create_up_down_counter(
    "lineloop.ingest.decode.pixels", unit="{pixel}",
    description="Pixels of the decode budget held by frames in flight (LINELOOP_INGEST_DECODE_PIXEL_BUDGET caps it).",
)

# Ids become object keys, metric labels and file names downstream: a safe charset only.
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_DECODE_REASONS = {
    Failure.UNDECODABLE: RejectReason.REJECT_REASON_UNDECODABLE_IMAGE,
    Failure.UNSUPPORTED_FORMAT: RejectReason.REJECT_REASON_UNSUPPORTED_FORMAT,
    Failure.TOO_LARGE: RejectReason.REJECT_REASON_IMAGE_TOO_LARGE,
}


class FrameRefused(Exception):
    """A frame that fails validation: it becomes a frames.rejected.v1 event."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{RejectReason.Name(reason)}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass
class Prepared:
    """A frame that passed validation: stored, measured and scored, not yet recorded."""

    frame: FrameCaptured
    stored: StoredObject
    content_type: str
    width: int
    height: int
    quality: QualityStats
    prediction: Prediction


@dataclasses.dataclass
class Refused:
    frame: FrameCaptured
    reason: RejectReason
    detail: str


@dataclasses.dataclass
class Recorded:
    """What `record` did: the event to publish (None when the frame id was already recorded)."""

    ingested: FrameIngested | None = None
    rejected: FrameRejected | None = None
    repeat_of: FrameIngested | None = None  # the same frame id, recorded before


def _check_id(name: str, value: str) -> None:
    if not value:
        raise FrameRefused(RejectReason.REJECT_REASON_INVALID_ID, f"{name} is missing")
    if not SAFE_ID.match(value) or ".." in value:
        raise FrameRefused(
            RejectReason.REJECT_REASON_INVALID_ID,
            f"{name} {value[:80]!r} is not 1-128 characters of letters, digits and _.:- (no '..', '/')",
        )


class Pipeline:
    def __init__(self, settings: IngestSettings, objects: ObjectStore, scorer: TritonScorer, db: Database) -> None:
        self.settings = settings
        self.objects = objects
        self.db = db
        self.scorer = scorer
        # S3 calls block a thread each: as many as frames in flight, beside the
        # default executor the bus and gRPC use. Decoding is CPU work: one thread per CPU
        # the container may use (its cgroup quota), not per core of the node.
        self._io = ThreadPoolExecutor(settings.max_concurrent_frames, thread_name_prefix="ingest-s3")
        self._cpu = ThreadPoolExecutor(available_cpus(), thread_name_prefix="ingest-decode")
        self.decode_budget = PixelBudget(settings.decode_pixel_budget)
        self.limits = DecodeLimits(
            max_bytes=settings.max_image_bytes, max_side=settings.max_image_side, max_pixels=settings.max_image_pixels
        )
        self._lines = frozenset(settings.lines)
        self._upload_buckets = frozenset(settings.upload_buckets)

    # ---- the stateless part ------------------------------------------------------

    async def prepare(self, frame: FrameCaptured) -> Prepared | Refused:
        with tracer.start_as_current_span("ingest prepare") as span:
            span.set_attribute("lineloop.frame_id", frame.frame_id[:128])
            try:
                return await self._prepare(frame)
            except FrameRefused as refused:
                span.set_attribute("lineloop.reject_reason", RejectReason.Name(refused.reason))
                return Refused(frame, refused.reason, refused.detail)

    async def _prepare(self, frame: FrameCaptured) -> Prepared:
        t0 = time.perf_counter()
        self._validate(frame)
        data, declared_sha = await self._image_bytes(frame)
        t1 = time.perf_counter()
        # The header only: limits and decompression bombs are refused before any pixel exists.
        header = await self._run(self._cpu, self._open, data)
        async with self._decode_pixels(header):
            t2 = time.perf_counter()
            # Includes waiting for a free decode thread when many frames arrive at once.
            image, quality = await self._run(self._cpu, self._decode, header)
            del header
            t3 = time.perf_counter()
            # Scoring needs the full-resolution image, so the frame keeps its pixels until
            # both are done; a failure of one cancels the other rather than let it hold
            # the image past the budget.
            store = asyncio.ensure_future(self._store(frame, data, image.extension, image.content_type, declared_sha))
            score = asyncio.ensure_future(self._score(frame, image.image))
            try:
                stored, prediction = await asyncio.gather(store, score)
            except BaseException:
                store.cancel()
                score.cancel()
                raise
            prepared = Prepared(frame, stored, image.content_type, image.width, image.height, quality, prediction)
            del image, score
        t4 = time.perf_counter()
        stage_duration.record(t1 - t0, {"stage": "fetch"})
        stage_duration.record(t2 - t1, {"stage": "decode_budget_wait"})
        stage_duration.record(t3 - t2, {"stage": "decode"})
        stage_duration.record(t4 - t3, {"stage": "store_and_score"})
        return prepared

    @contextlib.asynccontextmanager
    async def _decode_pixels(self, header: ImageHeader):
        """Hold the frame's pixels of the decode budget while its full-resolution image lives."""
        pixels = header.pixels
        try:
            await self.decode_budget.acquire(pixels)
        except OverBudget as exc:
            # Only when LINELOOP_INGEST_MAX_IMAGE_PIXELS were above the budget (settings refuse
            # that): waiting could never end, so the frame is refused instead.
            raise FrameRefused(
                RejectReason.REJECT_REASON_IMAGE_TOO_LARGE,
                f"{header.width}x{header.height}: {exc} (LINELOOP_INGEST_DECODE_PIXEL_BUDGET)",
            ) from exc
        decode_pixels.add(pixels)
        try:
            yield
        finally:
            self.decode_budget.release(pixels)
            decode_pixels.add(-pixels)

    def _validate(self, frame: FrameCaptured) -> None:
        for name in ("frame_id", "line_id", "camera_id", "gateway_id"):
            _check_id(name, getattr(frame, name))
        if self._lines and frame.line_id not in self._lines:
            raise FrameRefused(RejectReason.REJECT_REASON_UNKNOWN_LINE, f"line {frame.line_id!r} is not configured here")
        if frame.HasField("captured_at"):
            try:
                captured = frame.captured_at.ToDatetime(tzinfo=UTC)
            except ValueError as exc:  # nanos outside 0..999999999, seconds past year 9999
                raise FrameRefused(
                    RejectReason.REJECT_REASON_INVALID_CAPTURE_TIME,
                    f"captured_at {{seconds: {frame.captured_at.seconds}, nanos: {frame.captured_at.nanos}}}: {exc}",
                ) from exc
            latest = datetime.now(UTC) + timedelta(seconds=self.settings.max_clock_skew_s)
            if captured > latest:
                raise FrameRefused(
                    RejectReason.REJECT_REASON_CAPTURE_TIME_IN_FUTURE,
                    f"captured_at {captured.isoformat()} is more than {self.settings.max_clock_skew_s:g} s ahead of ingest's clock",
                )
        if frame.content_type and frame.content_type.split(";")[0].strip().lower() not in SUPPORTED_CONTENT_TYPES:
            raise FrameRefused(
                RejectReason.REJECT_REASON_UNSUPPORTED_FORMAT,
                f"content_type {frame.content_type[:80]!r}; supported: {', '.join(sorted(SUPPORTED_CONTENT_TYPES))}",
            )

    async def _image_bytes(self, frame: FrameCaptured) -> tuple[bytes, str | None]:
        which = frame.WhichOneof("image")
        if which == "inline_image":
            data = frame.inline_image
            if len(data) > MAX_INLINE_IMAGE_BYTES:  # the README's limit, which the topics' record limit fits
                raise FrameRefused(
                    RejectReason.REJECT_REASON_IMAGE_TOO_LARGE,
                    f"inline image is {len(data)} bytes, the limit is {MAX_INLINE_IMAGE_BYTES}; upload it and send image_ref",
                )
            if not data:
                raise FrameRefused(RejectReason.REJECT_REASON_MISSING_IMAGE, "inline_image is empty")
            return data, None
        if which != "image_ref":
            raise FrameRefused(RejectReason.REJECT_REASON_MISSING_IMAGE, "frame has neither image_ref nor inline_image")
        ref = frame.image_ref
        if ref.bucket not in self._upload_buckets:
            raise FrameRefused(
                RejectReason.REJECT_REASON_IMAGE_NOT_FOUND,
                f"image_ref bucket {ref.bucket[:64]!r} is not an upload bucket ({', '.join(sorted(self._upload_buckets))})",
            )
        if not ref.key or ref.key.startswith("/") or ".." in ref.key.split("/") or len(ref.key) > 1024:
            raise FrameRefused(RejectReason.REJECT_REASON_INVALID_ID, f"image_ref key {ref.key[:80]!r} is not a plain object key")
        sha = ref.sha256.lower()
        if not SHA256_HEX.match(sha):
            raise FrameRefused(
                RejectReason.REJECT_REASON_SHA256_MISMATCH, f"image_ref sha256 {ref.sha256[:80]!r} is not 64 hex digits"
            )
        try:
            info = await self._run(self._io, self.objects.stat, ref.bucket, ref.key)
            if info.size_bytes > self.settings.max_image_bytes:
                raise FrameRefused(
                    RejectReason.REJECT_REASON_IMAGE_TOO_LARGE,
                    f"{ref.bucket}/{ref.key} is {info.size_bytes} bytes, the limit is {self.settings.max_image_bytes}",
                )
            data = await self._run(self._io, self.objects.get_bytes, ref.bucket, ref.key, sha)
        except ObjectNotFound as exc:
            raise FrameRefused(RejectReason.REJECT_REASON_IMAGE_NOT_FOUND, str(exc)) from exc
        except Sha256Mismatch as exc:
            raise FrameRefused(
                RejectReason.REJECT_REASON_SHA256_MISMATCH,
                f"{ref.bucket}/{ref.key} hashes to {exc.actual}, the frame says {exc.expected}",
            ) from exc
        return data, sha

    @staticmethod
    async def _run(pool: ThreadPoolExecutor, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def close(self) -> None:
        self._io.shutdown(wait=False, cancel_futures=True)
        self._cpu.shutdown(wait=False, cancel_futures=True)

    def _open(self, data: bytes) -> ImageHeader:
        try:
            return open_image(data, self.limits)
        except ImageRejected as exc:
            raise FrameRefused(_DECODE_REASONS[exc.failure], exc.detail) from exc

    def _decode(self, header: ImageHeader) -> tuple[DecodedImage, QualityStats]:
        try:
            image = load_image(header)
        except ImageRejected as exc:
            raise FrameRefused(_DECODE_REASONS[exc.failure], exc.detail) from exc
        q = quality_stats(image.image)
        return image, QualityStats(**q.as_dict())

    async def _store(self, frame: FrameCaptured, data: bytes, ext: str, content_type: str, sha: str | None) -> StoredObject:
        """Content-addressed and written once: content the frame index knows is not written again."""
        started = time.perf_counter()
        bucket = self.settings.frames_bucket
        sha = sha or sha256_hex(data)
        key = content_key(sha, ext)
        if frame.image_ref.bucket == bucket and frame.image_ref.key == key:
            # The gateway uploaded it under its content address, and we just read and verified it.
            return StoredObject(bucket, key, sha, len(data), existed=True)
        if await self._run(self._io, self._known, sha):
            return StoredObject(bucket, key, sha, len(data), existed=True)
        # Unknown content: one PUT, no existence check first. If an attempt that crashed
        # before indexing left the object, this writes the same bytes under the same key.
        stored = await self._run(self._io, self.objects.put_bytes, bucket, key, data, content_type)
        stage_duration.record(time.perf_counter() - started, {"stage": "store"})
        return stored

    def _known(self, sha: str) -> bool:
        with self.db.session() as session:
            return state.first_frame_with(session, sha) is not None

    async def _score(self, frame: FrameCaptured, image) -> Prediction:
        started = time.perf_counter()
        prediction = await self.scorer.score(frame.frame_id, frame.line_id, image)
        stage_duration.record(time.perf_counter() - started, {"stage": "score"})
        return prediction

    # ---- the database part ------------------------------------------------------

    def record(self, session: Session, outcome: Prepared | Refused, *, path: str, source_event_id: str = "") -> Recorded:
        """Index the frame (or build its rejection) in `session`'s transaction.

        A frame id seen before is not recorded again (a gateway retry, or two
        replicas after a rebalance): the first result stands.
        """
        frame = outcome.frame
        now = Timestamp()
        now.GetCurrentTime()
        if isinstance(outcome, Refused):
            frames_total.add(1, {"path": path, "outcome": "rejected"})
            shared_metrics.rejections.add(1, {"service": "ingest", "reason": RejectReason.Name(outcome.reason)})
            log.info("frame %r rejected: %s: %s", frame.frame_id[:128], RejectReason.Name(outcome.reason), outcome.detail)
            rejected = FrameRejected(
                frame_id=frame.frame_id, line_id=frame.line_id, camera_id=frame.camera_id,
                gateway_id=frame.gateway_id, reason=outcome.reason, detail=outcome.detail,
                rejected_at=now, source_event_id=source_event_id,
            )
            if frame.HasField("captured_at"):
                rejected.captured_at.CopyFrom(frame.captured_at)
            return Recorded(rejected=rejected)
        existing = state.find_frame(session, frame.frame_id)
        if existing is not None:
            frames_total.add(1, {"path": path, "outcome": "repeat"})
            return Recorded(repeat_of=existing)
        sha = outcome.stored.sha256
        first = state.first_frame_with(session, sha)
        if first is None:
            state.add_image(session, sha, frame.frame_id)
        event = FrameIngested(
            frame_id=frame.frame_id, line_id=frame.line_id, camera_id=frame.camera_id, gateway_id=frame.gateway_id,
            ingested_at=now,
            image=ObjectRef(bucket=outcome.stored.bucket, key=outcome.stored.key, sha256=sha,
                            size_bytes=outcome.stored.size_bytes),
            content_type=outcome.content_type, width=outcome.width, height=outcome.height,
            quality=outcome.quality, prediction=outcome.prediction,
            duplicate=first is not None, duplicate_of=first or "",
            attributes=dict(frame.attributes),
        )
        if frame.HasField("captured_at"):
            event.captured_at.CopyFrom(frame.captured_at)
        else:
            # Windows and latencies downstream need a time: the best we know is now.
            event.captured_at.CopyFrom(now)
            event.attributes["captured_at"] = "assumed at ingest"
        if frame.HasField("edge_prediction"):
            event.edge_prediction.CopyFrom(frame.edge_prediction)
        state.add_frame(session, event, event.captured_at.ToDatetime(tzinfo=UTC))
        frames_total.add(1, {"path": path, "outcome": "duplicate" if first else "ingested"})
        return Recorded(ingested=event)
