"""Reconciliation of the frames bucket with ingest's frame index.

Finds objects in the frames bucket that no indexed frame points at (orphans: a gRPC upload
whose client never resent, a frame stored whose index write never committed) and indexed
frames whose object is missing. It reports both and, when asked, deletes orphans older than a
grace period. Gateways' staged uploads (`uploads/...`, RequestUploads) are never referenced:
ingest copies each under its content key. They are counted apart (`staged`), so that an orphan
still means something went wrong, and a deleting pass removes them after the same grace period.

Why deleting is safe with N ingest replicas (and N reconcilers): ingest writes an object
before it commits the index row that points at it, and commits within one prepare→commit
(seconds, or a consumer's lag when a gateway uploaded the image and queued the frame). An
object older than the grace period that is unreferenced when checked therefore belongs to no
write in progress, provided the grace period exceeds the longest prepare→commit, consumer
lag included. Each orphan is checked again right before its delete: stat (a re-upload of the
same content makes it young again) and the index (a frame committed meanwhile). What remains
is the few milliseconds between that check and the delete; a frame recorded in them shows up as
a missing object in the next report. Deletes are idempotent, so reconcilers running at once
on several replicas do no harm.

A gateway that uploads an image and queues the frame on frames.captured.v1 makes that time
as long as ingest's backlog: ingest down for two days, and every upload queued meanwhile would
look old and unreferenced. So a deleting pass reads ingest's consumer position first and takes
the time of the oldest frame not yet consumed as its clock, when that is earlier than now: an
object counts as old only if it is older than the grace period *before that frame*, and the
grace period then only has to cover a gateway's upload→publish (default a day). If the broker
cannot be read, nothing is deleted (`BacklogUnknown`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from datetime import UTC, datetime

from concurrent.futures import ThreadPoolExecutor

from aiokafka import AIOKafkaConsumer, TopicPartition
from opentelemetry import metrics
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.exc import SQLAlchemyError

from lineloop.bus import kafka_group_id
from lineloop.contracts.topics import event_type
from lineloop.ingest import state
from lineloop.ingest.api import UPLOAD_PREFIX
from lineloop.ingest.settings import IngestSettings
from lineloop.v1.events_pb2 import FrameCaptured
from lineloop.storage.objects import ObjectNotFound, ObjectStore
from lineloop.storage.sql import Database, sqlite_file_exists

log = logging.getLogger(__name__)
_meter = metrics.get_meter("lineloop.ingest")
reconciled = _meter.create_counter(
    "lineloop.ingest.reconcile.objects", unit="{object}",
    description="Objects found by reconciliation. Attributes: outcome (orphan|in_grace|staged|missing|deleted).",
)


class NoIngestDatabase(RuntimeError):
    """Ingest's database is not there, or has no ingest schema (ingest never ran against it)."""


class BacklogUnknown(RuntimeError):
    """Ingest's position on frames.captured.v1 could not be read: a deleting pass stops there."""


class ReconcileSettings(BaseSettings):
    """`LINELOOP_INGEST_RECONCILE_*`: the reconciliation job."""

    model_config = SettingsConfigDict(env_prefix="LINELOOP_INGEST_RECONCILE_", extra="ignore")

    # Orphans younger than this are never deleted (an upload in flight; see the module doc).
    grace_s: float = 86_400.0
    # How often each ingest replica reconciles; 0: never (run `lineloop reconcile` instead).
    interval_s: float = 0.0
    # Whether the periodic job deletes the orphans older than the grace period, or only reports them.
    delete: bool = False


@dataclasses.dataclass(frozen=True)
class Orphan:
    bucket: str
    key: str
    size_bytes: int
    age_s: float


@dataclasses.dataclass(frozen=True)
class Missing:
    bucket: str
    key: str
    frame_ids: list[str]  # the first few frames that point at it


@dataclasses.dataclass
class Report:
    """One reconciliation pass. `orphans` are older than the grace period, `in_grace` younger;
    `staged` are gateways' uploads (any age), expected and not an inconsistency."""

    checked_at: datetime
    bucket: str
    grace_s: float
    # Time of the oldest frame ingest has not consumed yet, when a deleting pass found one: the clock ages are judged by.
    backlog_since: datetime | None = None
    objects: int = 0
    references: int = 0
    orphans: list[Orphan] = dataclasses.field(default_factory=list)
    in_grace: list[Orphan] = dataclasses.field(default_factory=list)
    staged: list[Orphan] = dataclasses.field(default_factory=list)
    missing: list[Missing] = dataclasses.field(default_factory=list)
    deleted: list[str] = dataclasses.field(default_factory=list)

    @property
    def consistent(self) -> bool:
        """No reference to a missing object and no orphan past the grace period left in place."""
        remaining = {o.key for o in self.orphans} - set(self.deleted)
        return not self.missing and not remaining

    def as_dict(self) -> dict:
        return {
            "checked_at": self.checked_at.isoformat(),
            "bucket": self.bucket,
            "grace_s": self.grace_s,
            "backlog_since": self.backlog_since.isoformat() if self.backlog_since else None,
            "objects": self.objects,
            "references": self.references,
            "orphans": [dataclasses.asdict(o) for o in self.orphans],
            "in_grace": [dataclasses.asdict(o) for o in self.in_grace],
            "staged": [dataclasses.asdict(o) for o in self.staged],
            "missing": [dataclasses.asdict(m) for m in self.missing],
            "deleted": self.deleted,
            "consistent": self.consistent,
        }


def find_inconsistencies(settings: IngestSettings | None = None, *, grace_s: float | None = None) -> Report:
    """Report only: orphan objects and references to missing objects of the ingest deployment
    `settings` describes (default: the environment's). `grace_s=0` counts every unreferenced
    object as an orphan, which is what a checker wants once traffic has stopped."""
    return reconcile(settings, grace_s=grace_s, delete=False)


def reconcile(settings: IngestSettings | None = None, *, grace_s: float | None = None, delete: bool = False) -> Report:
    """`find_inconsistencies`, and with `delete` the orphans older than `grace_s` removed
    (default: `LINELOOP_INGEST_RECONCILE_GRACE_S`).

    Raises:
        NoIngestDatabase: ingest's database is not there or has no ingest schema.
        BacklogUnknown: (with `delete`) ingest's consumer position could not be read.
    """
    settings = settings or IngestSettings()
    if grace_s is None:
        grace_s = ReconcileSettings().grace_s
    stack = settings.stack
    if not sqlite_file_exists(settings.sql_url):
        raise NoIngestDatabase(f"no ingest database at {settings.sql_url}")
    db = Database(settings.sql_url)
    try:
        try:
            schema = db.schema_version(state.SCHEMA_COMPONENT)
        except SQLAlchemyError as exc:
            raise NoIngestDatabase(f"no ingest schema in {db.safe_url}: {exc.__class__.__name__}") from exc
        if schema is None:
            raise NoIngestDatabase(f"no ingest schema in {db.safe_url}")
        objects = stack.object_store()
        backlog = None
        if delete:
            with ThreadPoolExecutor(max_workers=1) as pool:  # callable from inside an event loop too
                backlog = pool.submit(asyncio.run, oldest_pending_frame(settings)).result()
        return check(db, objects, settings.frames_bucket, grace_s=grace_s, delete=delete, backlog_since=backlog)
    finally:
        db.dispose()


END_PROBE_MS = 1000  # how long a partition that looks caught up is read to make sure


async def oldest_pending_frame(settings: IngestSettings, timeout_s: float = 10.0) -> datetime | None:
    """Timestamp of the oldest frames.captured.v1 record ingest's consumer group has not
    committed yet; None when it is caught up.

    Reads committed offsets without joining the group (manual assignment), so the group's
    members are not disturbed.

    Raises:
        BacklogUnknown: the broker did not answer, or a pending record could not be read.
    """
    topic = event_type(FrameCaptured).topic
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.stack.kafka_bootstrap, group_id=kafka_group_id(settings.consumer_group, topic),
        enable_auto_commit=False, request_timeout_ms=int(timeout_s * 1000),
        **settings.stack.kafka_security().client_options(),
    )
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
        await asyncio.wait_for(consumer.topics(), timeout_s)  # refreshes what partitions_for_topic reads
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            return None
        consumer.assign(partitions)
        begins = await asyncio.wait_for(consumer.beginning_offsets(partitions), timeout_s)
        ends = await asyncio.wait_for(consumer.end_offsets(partitions), timeout_s)
        oldest = None
        for tp in partitions:
            committed = await asyncio.wait_for(consumer.committed(tp), timeout_s)
            # No commit yet: the group starts at the beginning (the bus's auto_offset_reset).
            position = max(committed if committed is not None else begins[tp], begins[tp])
            consumer.seek(tp, position)
            # The end offset is a hint, a read decides: the embedded broker reports the end of a
            # partition whose last write was a batch of N records as the batch's first offset + 1,
            # which would call N - 1 pending frames consumed (and their uploads orphans).
            behind = position < ends[tp]
            wait_ms = int(timeout_s * 1000) if behind else END_PROBE_MS
            batch = await consumer.getmany(tp, timeout_ms=wait_ms, max_records=1)
            records = batch.get(tp, [])
            if not records:
                if behind:
                    raise BacklogUnknown(f"{tp.topic}[{tp.partition}]: no record readable at offset {position}")
                continue
            stamp = datetime.fromtimestamp(records[0].timestamp / 1000, UTC)
            oldest = stamp if oldest is None else min(oldest, stamp)
        return oldest
    except BacklogUnknown:
        raise
    except Exception as exc:
        raise BacklogUnknown(f"ingest's position on {topic} could not be read: {exc.__class__.__name__}: {exc}") from exc
    finally:
        await consumer.stop()


def check(db: Database, objects: ObjectStore, bucket: str, *, grace_s: float, delete: bool,
          backlog_since: datetime | None = None) -> Report:
    """One pass over `bucket` and the frame index in `db`; ages are judged against
    `backlog_since` (see `oldest_pending_frame`) when that is earlier than now."""
    if grace_s < 0:
        raise ValueError(f"grace period must be 0 s or more, got {grace_s:g}")
    now = datetime.now(UTC)
    report = Report(checked_at=now, bucket=bucket, grace_s=grace_s, backlog_since=backlog_since)
    clock = min(now, backlog_since) if backlog_since else now
    # The listing comes first: an object written after it cannot be called an orphan, and
    # one committed after the index read is only in_grace (young), never deleted.
    listed = {obj.key: obj for obj in objects.list_objects(bucket)}
    with db.session() as session:
        references = state.referenced_objects(session)
    report.objects = len(listed)
    report.references = len(references)

    stale_uploads: list[Orphan] = []  # staged uploads past the grace period: a deleting pass removes them too
    for key in sorted(set(listed) - {k for b, k in references if b == bucket}):
        obj = listed[key]
        age = (now - obj.last_modified).total_seconds() if obj.last_modified else 0.0
        old = obj.last_modified is not None and (clock - obj.last_modified).total_seconds() >= grace_s
        orphan = Orphan(bucket, key, obj.size_bytes, round(age, 3))
        if key.startswith(UPLOAD_PREFIX):
            report.staged.append(orphan)
            if old:
                stale_uploads.append(orphan)
        else:
            (report.orphans if old else report.in_grace).append(orphan)

    for ref_bucket, key in sorted(references):
        if ref_bucket == bucket and key in listed:
            continue
        # Written after the listing, or in another bucket: only a stat says it is missing.
        if _exists(objects, ref_bucket, key):
            continue
        with db.session() as session:
            frame_ids = state.frames_referencing(session, ref_bucket, key)
        report.missing.append(Missing(ref_bucket, key, frame_ids))

    if delete:
        for orphan in [*report.orphans, *stale_uploads]:
            if _delete_if_still_orphan(db, objects, orphan, grace_s, backlog_since):
                report.deleted.append(orphan.key)

    for outcome, count in (("orphan", len(report.orphans)), ("in_grace", len(report.in_grace)), ("staged", len(report.staged)),
                           ("missing", len(report.missing)), ("deleted", len(report.deleted))):
        if count:
            reconciled.add(count, {"outcome": outcome})
    log.info("reconciled %s: %d objects, %d references, %d orphans, %d in grace, %d staged uploads, %d deleted, %d missing",
             bucket, report.objects, report.references, len(report.orphans), len(report.in_grace), len(report.staged),
             len(report.deleted), len(report.missing))
    return report


def _exists(objects: ObjectStore, bucket: str, key: str) -> bool:
    try:
        objects.stat(bucket, key)
        return True
    except ObjectNotFound:
        return False


def _delete_if_still_orphan(db: Database, objects: ObjectStore, orphan: Orphan, grace_s: float,
                            backlog_since: datetime | None) -> bool:
    """Delete `orphan` when it is still old and still unreferenced, checked just now."""
    try:
        info = objects.stat(orphan.bucket, orphan.key)
    except ObjectNotFound:
        return False  # another reconciler got there first
    now = datetime.now(UTC)
    clock = min(now, backlog_since) if backlog_since else now
    if info.last_modified is None or (clock - info.last_modified).total_seconds() < grace_s:
        return False  # written again since the listing: an upload in flight
    with db.session() as session:
        if state.frames_referencing(session, orphan.bucket, orphan.key, limit=1):
            return False
    objects.delete(orphan.bucket, orphan.key)
    log.info("deleted orphan object %s/%s (%d bytes, %.0f s old)", orphan.bucket, orphan.key,
             orphan.size_bytes, orphan.age_s)
    return True


async def run_periodically(db: Database, objects: ObjectStore, ingest: IngestSettings,
                           settings: ReconcileSettings) -> None:
    """The job inside ingest: one pass every `interval_s`, in a worker thread; a failed pass
    (a deleting one that could not read the backlog included) is logged and the next one tried."""
    while True:
        await asyncio.sleep(settings.interval_s)
        try:
            backlog = await oldest_pending_frame(ingest) if settings.delete else None
            await asyncio.to_thread(check, db, objects, ingest.frames_bucket, grace_s=settings.grace_s,
                                    delete=settings.delete, backlog_since=backlog)
        except Exception:
            log.exception("reconciliation of %s failed; next try in %.0f s", ingest.frames_bucket, settings.interval_s)


def schedule(service, ingest: IngestSettings, settings: ReconcileSettings | None = None) -> None:
    """Run the periodic job in `service` (a `lineloop.runtime.Service`) when `interval_s` > 0."""
    settings = settings or ReconcileSettings()
    if settings.interval_s <= 0:
        return
    tasks: list[asyncio.Task] = []

    @service.on_start
    async def start_reconciling() -> None:
        tasks.append(asyncio.create_task(
            run_periodically(service.db, service.objects, ingest, settings), name="reconcile"))

    @service.on_stop
    async def stop_reconciling() -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
