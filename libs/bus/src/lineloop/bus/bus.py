"""The event bus every service uses: typed protobuf handlers on FastStream's KafkaBroker.

A consumed record goes through one path:
  decode (CloudEvents headers + protobuf/JSON value) -> inbox check ->
  handler (in a DB transaction, with events it emits written to the outbox) ->
  commit -> offset commit.
A record that cannot be decoded, or that the handler rejects, goes to
`<topic>.dlq` with the reason in headers; a handler that keeps failing is
retried, then dead-lettered. Nothing blocks a partition or stops the service,
except a dependency that is down (object store, database, a gRPC peer): then
the record is retried, with backoff, until it answers, because every record
behind it would fail the same way and none of them is bad.
Offsets are committed once per fetched batch, after every record in it is durable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from aiokafka import ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage
from google.protobuf.message import Message
from opentelemetry import propagate, trace
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lineloop.bus import outbox
from lineloop.bus.cloudevents import Envelope, decode, header_dict, make_headers
from lineloop.bus.errors import Reject, is_unavailable
from lineloop.contracts.topics import BY_TOPIC, EventType, event_type
from lineloop.storage.sql import Database, utcnow
from lineloop.telemetry import metrics

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

M = TypeVar("M", bound=Message)


@dataclass
class EventContext:
    """What a handler gets beside the message."""

    envelope: Envelope
    topic: str
    partition: int
    offset: int
    source: str
    session: Session | None = None
    emitted: list[str] = field(default_factory=list)

    @property
    def event_id(self) -> str:
        return self.envelope.id

    def emit(self, msg: Message) -> str:
        """Write an event to the outbox in this handler's transaction."""
        if self.session is None:
            raise RuntimeError("emit() needs a handler registered on a bus with a database")
        event_id = outbox.add(self.session, msg, source=self.source)
        self.emitted.append(event_id)
        return event_id


Handler = Callable[[M, EventContext], Awaitable[None]]


@dataclass
class _Registration(Generic[M]):
    et: EventType
    group: str
    fn: Handler


# How long a poll waits for records: FastStream's 200 ms default showed up in a quiet line's
# latency (one frame through ingest: p50 201 -> 154 ms at 50 ms; 10 ms gained nothing more).
BATCH_TIMEOUT_MS = 50


class Bus:
    """Publishing, typed consumption, inbox/outbox and DLQ over one Kafka cluster."""

    def __init__(
        self,
        bootstrap: str,
        *,
        source: str,
        db: Database | None = None,
        partitions: int = 3,
        max_attempts: int = 3,
        retry_backoff_s: float = 0.5,
        max_retry_backoff_s: float = 30.0,
        max_batch: int = 100,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
    ) -> None:
        self.source = source
        self.db = db
        self.partitions = partitions
        self.max_attempts = max_attempts
        self.retry_backoff_s = retry_backoff_s
        self.max_retry_backoff_s = max_retry_backoff_s
        self.max_batch = max_batch
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.bootstrap = bootstrap
        # acks=all and a short linger: each produce request is one object in
        # Tansu's S3 storage, so small batches cost far less than single sends.
        self.broker = KafkaBroker(
            bootstrap, client_id=source, acks="all", linger_ms=5, logger=log, log_level=logging.DEBUG,
        )
        self.relay = outbox.OutboxRelay(db, self.broker, source=source) if db is not None else None
        self._registrations: list[_Registration] = []
        self._started = False

    # ---- consuming ----------------------------------------------------------

    def handler(self, message_type: type[M], *, group: str) -> Callable[[Handler], Handler]:
        """Register `fn(msg, ctx)` for the topic of `message_type`, in consumer group `group`."""

        def register(fn: Handler) -> Handler:
            if self._started:
                raise RuntimeError("register handlers before Bus.start()")
            reg = _Registration(event_type(message_type), group, fn)
            self._registrations.append(reg)

            async def consume(body: Any, msg: KafkaMessage) -> None:
                records = msg.raw_message if isinstance(msg.raw_message, tuple) else (msg.raw_message,)
                for record in records:
                    await self._process(reg, record)
                await msg.ack()

            self.broker.subscriber(
                reg.et.topic,
                group_id=group,
                batch=True,
                max_records=self.max_batch,
                auto_offset_reset="earliest",
                ack_policy=AckPolicy.MANUAL,
                decoder=_keep_raw,
                session_timeout_ms=self.session_timeout_ms,
                heartbeat_interval_ms=self.heartbeat_interval_ms,
                batch_timeout_ms=BATCH_TIMEOUT_MS,
            )(consume)
            return fn

        return register

    async def _process(self, reg: _Registration, record: ConsumerRecord) -> None:
        headers = header_dict(record.headers)
        labels = {"topic": reg.et.topic, "ce_type": reg.et.ce_type, "group": reg.group}
        try:
            message, env = decode(reg.et, record.value, headers)
        except Reject as rej:
            await self._dead_letter(reg, record, headers, rej.reason, rej.detail)
            return
        parent = propagate.extract(headers)
        attempt = errors = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            outcome = "applied"
            with tracer.start_as_current_span(
                f"{reg.et.topic} process", context=parent, kind=trace.SpanKind.CONSUMER
            ) as span:
                span.set_attribute("messaging.system", "kafka")
                span.set_attribute("messaging.destination.name", reg.et.topic)
                span.set_attribute("messaging.consumer.group.name", reg.group)
                span.set_attribute("messaging.message.id", env.id)
                try:
                    ctx = EventContext(env, record.topic, record.partition, record.offset, self.source)
                    applied = await self._apply(reg, message, ctx)
                    outcome = "applied" if applied else "duplicate"
                    metrics.events_consumed.add(1, {**labels, "outcome": outcome})
                    return
                except Reject as rej:
                    outcome = "rejected"
                    await self._dead_letter(reg, record, headers, rej.reason, rej.detail)
                    return
                except Exception as exc:
                    span.record_exception(exc)
                    if is_unavailable(exc):
                        # Not the event's fault: wait for the dependency, however long, and count it.
                        outcome = "unavailable"
                        delay = min(self.retry_backoff_s * 2 ** min(attempt - 1, 16), self.max_retry_backoff_s)
                        log.warning("handler %s on %s: a dependency is unavailable (attempt %d, next in %.1f s): %s",
                                    reg.fn.__name__, env.id, attempt, delay, exc)
                    else:
                        outcome = "error"
                        errors += 1
                        if errors >= self.max_attempts:
                            log.exception("handler %s failed %d times on %s; dead-lettering", reg.fn.__name__, errors, env.id)
                            await self._dead_letter(reg, record, headers, "handler_error", f"{type(exc).__name__}: {exc}")
                            return
                        delay = self.retry_backoff_s * errors
                        log.warning("handler %s failed on %s (attempt %d): %s", reg.fn.__name__, env.id, errors, exc)
                    metrics.handler_retries.add(1, {**labels, "reason": outcome})
                finally:
                    metrics.handler_duration.record(time.perf_counter() - started, {**labels, "outcome": outcome})
            await asyncio.sleep(delay)

    async def _apply(self, reg: _Registration, message: Message, ctx: EventContext) -> bool:
        """Run the handler once per (group, ce_id); False if it was already applied."""
        if self.db is None:
            await reg.fn(message, ctx)
            return True
        consumer = f"{reg.group}:{reg.et.topic}"
        async with self.db.write() as session:
            seen = session.execute(
                outbox.inbox.select().where(outbox.inbox.c.consumer == consumer, outbox.inbox.c.ce_id == ctx.event_id)
            ).first()
            if seen:
                return False
            ctx.session = session
            try:
                await reg.fn(message, ctx)
                session.execute(outbox.inbox.insert().values(
                    consumer=consumer, ce_id=ctx.event_id, topic=reg.et.topic, applied_at=utcnow(),
                ))
                session.flush()
            except IntegrityError:
                # Another replica applied the same event first (rebalance redelivery).
                if session.execute(
                    outbox.inbox.select().where(
                        outbox.inbox.c.consumer == consumer, outbox.inbox.c.ce_id == ctx.event_id
                    )
                ).first():
                    return False
                raise
        if ctx.emitted and self.relay is not None:
            self.relay.wake()
        return True

    async def _dead_letter(
        self, reg: _Registration, record: ConsumerRecord, headers: dict[str, str], reason: str, detail: str
    ) -> None:
        log.warning(
            "dead-lettering %s[%d]@%d (%s): %s", record.topic, record.partition, record.offset, reason, detail,
            extra={"dlq_reason": reason, "topic": record.topic},
        )
        dlq_headers = {
            **{k: v for k, v in headers.items() if k != "correlation_id"},
            "dlq_reason": reason,
            "dlq_detail": detail[:2000],
            "dlq_topic": record.topic,
            "dlq_partition": str(record.partition),
            "dlq_offset": str(record.offset),
            "dlq_consumer_group": reg.group,
            "dlq_time": datetime.now(UTC).isoformat(),
        }
        dlq_headers.setdefault("content-type", "application/octet-stream")
        await self.broker.publish(record.value or b"", topic=reg.et.dlq_topic, key=record.key, headers=dlq_headers)
        metrics.events_dead_lettered.add(1, {"topic": reg.et.topic, "ce_type": reg.et.ce_type, "reason": reason})

    # ---- publishing ---------------------------------------------------------

    async def publish(self, msg: Message, *, event_id: str | None = None, key: bytes | None = None) -> str:
        """Publish directly (no state change behind it); returns the ce_id."""
        et = event_type(msg)
        with tracer.start_as_current_span(f"{et.topic} send", kind=trace.SpanKind.PRODUCER) as span:
            headers = make_headers(et, source=self.source, event_id=event_id)
            span.set_attribute("messaging.system", "kafka")
            span.set_attribute("messaging.destination.name", et.topic)
            span.set_attribute("messaging.message.id", headers["ce_id"])
            await self.broker.publish(msg.SerializeToString(), topic=et.topic, key=key or et.key_of(msg), headers=headers)
        metrics.events_published.add(1, {"topic": et.topic, "ce_type": et.ce_type, "via": "direct"})
        return headers["ce_id"]

    def add_to_outbox(self, session: Session, msg: Message) -> str:
        """For state changes outside a handler (gRPC): call in the transaction, then `relay.wake()`."""
        return outbox.add(session, msg, source=self.source)

    # ---- lifecycle ----------------------------------------------------------

    async def ensure_topics(self, topics: list[str] | None = None) -> None:
        """Create the event topics and their DLQs (idempotent)."""
        names = topics if topics is not None else [n for t in BY_TOPIC.values() for n in (t.topic, t.dlq_topic)]
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=f"{self.source}-admin")
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            missing = [NewTopic(n, self.partitions, 1) for n in names if n not in existing]
            if missing:
                try:
                    await admin.create_topics(missing)
                except TopicAlreadyExistsError:
                    pass  # another replica created them meanwhile
                log.info("created topics %s", [t.name for t in missing])
        finally:
            await admin.close()

    async def start(self) -> None:
        if self.db is not None:
            outbox.migrate(self.db)
        await self.ensure_topics()
        await self.broker.start()
        self._started = True
        if self.relay is not None:
            self.relay.start()

    async def stop(self) -> None:
        if self.relay is not None:
            await self.relay.stop()
        await self.broker.stop()
        self._started = False


async def _keep_raw(msg: Any) -> None:
    """The bus decodes records itself (headers decide the codec), not FastStream."""
    return None
