"""Inbox and outbox tables, and the relay that drains the outbox to Kafka.

The inbox records which `ce_id`s a consumer group has applied, in the same
transaction as the state change, so a redelivered event changes nothing.
`bus_dead_lettered` records the ones it refused (after the DLQ write was
acknowledged), so a redelivered refused record is not dead-lettered twice; a
replay from the DLQ (header `dlq_replayed_from`) is let through once, and
applying it moves the ce_id from there to the inbox. `bus_deliveries` counts
how often the record at a partition's head was delivered without finishing:
the poison bound (see `count_delivery`). The
outbox holds events written in the same transaction as the state that caused
them; the relay publishes them after commit, so a crash between "state saved"
and "event sent" loses nothing (the relay sends it on restart; a crash after
sending but before marking re-sends it once, and consumers dedupe by ce_id).
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime
from typing import TYPE_CHECKING

from google.protobuf.message import Message
from opentelemetry import trace
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    case,
    delete,
    func,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from lineloop.bus.cloudevents import make_headers
from lineloop.contracts.topics import BY_TOPIC, event_type
from lineloop.storage.sql import Database, utcnow
from lineloop.telemetry import metrics

if TYPE_CHECKING:
    from faststream.kafka import KafkaBroker

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

SCHEMA_COMPONENT = "lineloop.bus"
SCHEMA_VERSION = 2  # v2 added bus_dead_lettered and bus_deliveries (tables only)

metadata = MetaData()

inbox = Table(
    "bus_inbox",
    metadata,
    Column("consumer", String(128), primary_key=True),
    Column("ce_id", String(128), primary_key=True),
    Column("topic", String(255), nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)

# A ce_id this consumer dead-lettered (key: the ce_id, or `@topic/partition/offset` when the
# record had none). Where: the record that was refused, so a redelivery of that very record is
# recognised even when it is itself a replay.
dead_lettered = Table(
    "bus_dead_lettered",
    metadata,
    Column("consumer", String(128), primary_key=True),
    Column("ce_id", String(255), primary_key=True),
    Column("topic", String(255), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("reason", String(64), nullable=False),
    Column("dead_lettered_at", DateTime(timezone=True), nullable=False),
)

# One row per (consumer, partition): the offset of the record being handled there and how many
# times it was delivered. A partition is handled in offset order, so one row per partition is
# enough and the table never grows with traffic.
deliveries = Table(
    "bus_deliveries",
    metadata,
    Column("consumer", String(128), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("offset", BigInteger, nullable=False),
    Column("deliveries", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

outbox = Table(
    "bus_outbox",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("ce_id", String(128), nullable=False, unique=True),
    Column("topic", String(255), nullable=False),
    Column("key", LargeBinary, nullable=True),
    Column("value", LargeBinary, nullable=False),
    Column("headers", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


def migrate(db: Database) -> None:
    db.migrate(SCHEMA_COMPONENT, SCHEMA_VERSION, metadata)


def add(session: Session, msg: Message, *, source: str, event_id: str | None = None) -> str:
    """Write `msg` to the outbox inside the caller's transaction; returns its ce_id."""
    et = event_type(msg)
    with tracer.start_as_current_span(f"{et.topic} send", kind=trace.SpanKind.PRODUCER) as span:
        headers = make_headers(et, source=source, event_id=event_id)
        span.set_attribute("messaging.system", "kafka")
        span.set_attribute("messaging.destination.name", et.topic)
        span.set_attribute("messaging.message.id", headers["ce_id"])
    session.execute(
        outbox.insert().values(
            ce_id=headers["ce_id"], topic=et.topic, key=et.key_of(msg), value=msg.SerializeToString(),
            headers=json.dumps(headers), created_at=utcnow(),
        )
    )
    return headers["ce_id"]


def _insert(s: Session, table: Table):
    return (sqlite.insert if s.get_bind().dialect.name == "sqlite" else postgresql.insert)(table)


def finished(s: Session, consumer: str, key: str, *, partition: int, offset: int, replay: bool) -> str | None:
    """'applied' or 'dead_lettered' when this consumer is done with the event `key`, else None.

    A replay from the DLQ is a new chance for a refused event, unless this very record was refused.
    """
    if s.execute(select(inbox.c.ce_id).where(inbox.c.consumer == consumer, inbox.c.ce_id == key)).first():
        return "applied"
    refused = s.execute(
        select(dead_lettered.c.partition, dead_lettered.c.offset)
        .where(dead_lettered.c.consumer == consumer, dead_lettered.c.ce_id == key)
    ).first()
    if refused is None:
        return None
    if replay and (refused.partition, refused.offset) != (partition, offset):
        return None
    return "dead_lettered"


def mark_applied(s: Session, consumer: str, key: str, topic: str) -> None:
    """In the handler's transaction: applied once (an IntegrityError says another replica was first)."""
    s.execute(inbox.insert().values(consumer=consumer, ce_id=key, topic=topic, applied_at=utcnow()))
    s.execute(delete(dead_lettered).where(dead_lettered.c.consumer == consumer, dead_lettered.c.ce_id == key))


def mark_dead_lettered(
    s: Session, consumer: str, key: str, *, topic: str, partition: int, offset: int, reason: str
) -> None:
    """After the DLQ write was acknowledged. An upsert: replicas racing on one key both succeed."""
    values = dict(topic=topic, partition=partition, offset=offset, reason=reason, dead_lettered_at=utcnow())
    s.execute(
        _insert(s, dead_lettered).values(consumer=consumer, ce_id=key, **values)
        .on_conflict_do_update(index_elements=[dead_lettered.c.consumer, dead_lettered.c.ce_id], set_=values)
    )


def delivery_counts(s: Session, consumer: str, partitions: list[int]) -> dict[int, tuple[int, int]]:
    """partition -> (offset, deliveries) of the record last counted there."""
    if not partitions:
        return {}
    rows = s.execute(
        select(deliveries.c.partition, deliveries.c.offset, deliveries.c.deliveries)
        .where(deliveries.c.consumer == consumer, deliveries.c.partition.in_(partitions))
    ).all()
    return {r.partition: (r.offset, r.deliveries) for r in rows}


def count_delivery(s: Session, consumer: str, partition: int, offset: int) -> int:
    """Record one more delivery of the record at `offset`; returns how many it has had (0: not counted).

    The caller commits it BEFORE the record is worked on. N replicas on PostgreSQL: the UPDATE
    takes the row lock, so concurrent deliveries (a zombie member after a rebalance) each count;
    an older offset than the row's is a record a later one already passed (partition order):
    it is not counted and the row keeps the head.
    """
    s.execute(
        _insert(s, deliveries)
        .values(consumer=consumer, partition=partition, offset=offset, deliveries=0, updated_at=utcnow())
        .on_conflict_do_nothing(index_elements=[deliveries.c.consumer, deliveries.c.partition])
    )
    row = s.execute(
        update(deliveries)
        .where(deliveries.c.consumer == consumer, deliveries.c.partition == partition, deliveries.c.offset <= offset)
        .values(
            deliveries=case((deliveries.c.offset == offset, deliveries.c.deliveries + 1), else_=1),
            offset=offset, updated_at=utcnow(),
        )
        .returning(deliveries.c.deliveries)
    ).first()
    return row.deliveries if row else 0


def uncount_delivery(s: Session, consumer: str, partition: int, offset: int) -> None:
    """A delivery that ended without a death (an orderly stop, a failed step) does not count."""
    s.execute(
        update(deliveries)
        .where(deliveries.c.consumer == consumer, deliveries.c.partition == partition,
               deliveries.c.offset == offset, deliveries.c.deliveries > 0)
        .values(deliveries=deliveries.c.deliveries - 1)
    )


def forget_finished(s: Session, *, older_than: datetime, batch: int = 5000) -> int:
    """Delete up to `batch` inbox and dead-letter rows recorded before `older_than`; how many.

    Call with `older_than` at least the topics' retention ago (`INBOX_RETENTION_S`): past it the
    record is gone from its topic and cannot be delivered again. N replicas on PostgreSQL prune
    side by side: each claims its rows with SKIP LOCKED, so none waits on (or deadlocks with)
    another; a row another replica already deleted is simply not found.
    """
    deleted = 0
    for table, recorded_at in ((inbox, inbox.c.applied_at), (dead_lettered, dead_lettered.c.dead_lettered_at)):
        keys = s.execute(
            select(table.c.consumer, table.c.ce_id).where(recorded_at < older_than)
            .limit(batch).with_for_update(skip_locked=True)
        ).all()
        if keys:
            s.execute(delete(table).where(tuple_(table.c.consumer, table.c.ce_id).in_([tuple(k) for k in keys])))
            deleted += len(keys)
    return deleted


def pending(db: Database) -> int:
    with db.session() as s:
        return s.execute(select(func.count()).select_from(outbox)).scalar_one()


class OutboxRelay:
    """Publishes outbox rows in order, then deletes them (they live on in Kafka).

    Several replicas may relay from one PostgreSQL database: rows are claimed
    with SKIP LOCKED, so each is sent by one relay at a time.
    """

    def __init__(
        self, db: Database, broker: KafkaBroker, *, source: str, batch_size: int = 500, interval_s: float = 1.0
    ) -> None:
        self._db = db
        self._source = source
        self._broker = broker
        self._batch_size = batch_size
        self._interval_s = interval_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.flush()

    async def _run(self) -> None:
        while True:
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay failed; retrying")
            try:
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            except TimeoutError:
                pass
            self._wake.clear()

    async def flush(self) -> int:
        """Send everything pending now; returns how many events were sent."""
        sent = 0
        while True:
            if self._db.is_sqlite:
                # One relay per SQLite file: read, send outside the write lock, delete.
                async with self._db.write() as s:
                    rows = self._claim(s)
                if rows:
                    await self._send(rows)
                    async with self._db.write() as s:
                        self._delete(s, rows)
            else:
                # Row locks held until the delete commits: replicas never send the same row.
                async with self._db.write() as s:
                    rows = self._claim(s)
                    if rows:
                        await self._send(rows)
                        self._delete(s, rows)
            if not rows:
                metrics.outbox_pending.set(pending(self._db), {"service": self._source})
                return sent
            sent += len(rows)

    def _claim(self, s: Session) -> list:
        return s.execute(
            select(outbox.c.id, outbox.c.topic, outbox.c.key, outbox.c.value, outbox.c.headers)
            .order_by(outbox.c.id)
            .limit(self._batch_size)
            .with_for_update(skip_locked=True)
        ).all()

    async def _send(self, rows: list) -> None:
        # Queue every record first and await the acks together: the producer
        # batches them into few requests, in order within each partition.
        futures = [
            await self._broker.publish(
                row.value, topic=row.topic, key=row.key, headers=json.loads(row.headers), no_confirm=True
            )
            for row in rows
        ]
        await asyncio.gather(*futures)
        for row in rows:
            metrics.events_published.add(1, {"topic": row.topic, "ce_type": BY_TOPIC[row.topic].ce_type, "via": "outbox"})

    @staticmethod
    def _delete(s: Session, rows: list) -> None:
        s.execute(delete(outbox).where(outbox.c.id.in_([r.id for r in rows])))
