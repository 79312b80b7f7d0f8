"""Inbox and outbox tables, and the relay that drains the outbox to Kafka.

The inbox records which `ce_id`s a consumer group has applied, in the same
transaction as the state change, so a redelivered event changes nothing. The
outbox holds events written in the same transaction as the state that caused
them; the relay publishes them after commit, so a crash between "state saved"
and "event sent" loses nothing (the relay sends it on restart; a crash after
sending but before marking re-sends it once, and consumers dedupe by ce_id).
"""

from __future__ import annotations

import asyncio
import json
import logging
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
    delete,
    func,
    select,
)
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
SCHEMA_VERSION = 1

metadata = MetaData()

inbox = Table(
    "bus_inbox",
    metadata,
    Column("consumer", String(128), primary_key=True),
    Column("ce_id", String(128), primary_key=True),
    Column("topic", String(255), nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
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
