"""The event bus every service uses: typed protobuf handlers on FastStream's KafkaBroker.

A fetched batch goes through FastStream's own stages (docs/bus.md has the why):
  poll (aiokafka getmany) -> parser -> decoder (`_batch_decoder`: CloudEvents headers +
  protobuf/JSON value per record, or why not) -> the bus's batch middleware (inbox check,
  delivery count, committed before anything works on the records) -> the service's
  middlewares (ingest's prefetch) -> the batch handler: per record in offset order, the
  handler in a DB transaction (emitted events to the outbox, the ce_id to the inbox)
  -> ack policy NACK_ON_ERROR.
A record that cannot be decoded, that the handler rejects, that kept failing, or that kept
killing the process (`poison`) goes to `<topic>.dlq` with the reason in headers, and its
ce_id is recorded so a redelivery is not dead-lettered twice. A dependency that is down
(object store, database, a gRPC peer) is waited out with backoff: every record behind it
would fail the same way and none is bad.
The commit rule: a batch is acked (offsets committed) only when every record in it was
applied, dead-lettered with the DLQ write acknowledged, or skipped as finished before. If
anything escapes (the DLQ write fails, the database goes away mid-step), FastStream nacks
the batch, which seeks every partition back to its first record in the batch: nothing
behind the failure is committed, and the batch is redelivered after a backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from aiokafka import ConsumerRecord
from faststream import AckPolicy, BaseMiddleware, StreamMessage
from faststream.kafka import KafkaBroker, KafkaMessage, KafkaRouter
from google.protobuf.message import Message
from opentelemetry import propagate, trace
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lineloop.bus import outbox
from lineloop.bus.cloudevents import Envelope, decode, header_dict, make_headers
from lineloop.bus.errors import Reject, is_unavailable
from lineloop.bus.security import PLAINTEXT, KafkaSecurity
from lineloop.bus.topics import TopicSpec
from lineloop.bus.topics import ensure_topics as create_missing_topics
from lineloop.contracts.topics import MAX_DLQ_RECORD_BYTES, EventType, event_type
from lineloop.storage.sql import Database
from lineloop.telemetry import metrics

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

M = TypeVar("M", bound=Message)

# Set by `lineloop dlq replay` on the record it republishes: `<dlq topic>/<partition>/<offset>`.
REPLAYED_FROM = "dlq_replayed_from"


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


@dataclass
class Delivery:
    """One record of a batch as the bus's decoder leaves it: decoded, or refused with a reason.

    `done` ('applied' / 'dead_lettered': finished on an earlier delivery, skipped) is set by the
    bus's batch middleware before any other middleware sees the batch.
    """

    record: ConsumerRecord
    headers: dict[str, str]
    message: Message | None = None
    envelope: Envelope | None = None
    refused: Reject | None = None
    done: str | None = None

    @property
    def pending(self) -> bool:
        """Still to be handled: decoded, and not finished on an earlier delivery."""
        return self.done is None and self.message is not None

    @property
    def key(self) -> str:
        """What the inbox knows the record by: its ce_id, or where it is when it has none."""
        ce_id = self.envelope.id if self.envelope else self.headers.get("ce_id")
        return ce_id or f"@{self.record.topic}/{self.record.partition}/{self.record.offset}"

    @property
    def where(self) -> str:
        return f"{self.record.topic}[{self.record.partition}]@{self.record.offset}"


class Batch(list[Delivery]):
    """A fetched batch, decoded. `careful`: the previous delivery of this batch's head died
    unfinished, so its records are handled one at a time, each counted before it starts,
    and middlewares must not start work on several at once (ingest's prefetch checks it)."""

    careful: bool = False
    counted: dict[int, int]  # partition -> offset whose delivery this batch counted

    def __init__(self, deliveries: list[Delivery]) -> None:
        super().__init__(deliveries)
        self.counted = {}


Handler = Callable[[M, EventContext], Awaitable[None]]


def kafka_group_id(group: str, topic: str) -> str:
    """The Kafka consumer group of a service's subscription to one topic: `<group>.<topic>`.

    One group per (service, topic) rather than one per service: FastStream runs a consumer per
    subscription, and consumers with different subscriptions in one group rebalance each other
    (a join of the models consumer stops the frames consumer). On the embedded broker (Tansu) it
    also avoids a wedge: when two members of one group left within milliseconds (an orderly
    stop), the next member to join was made a follower of a leader that had gone, and never got
    an assignment. The inbox keeps its name per (group, topic), so nothing is applied twice.
    """
    return f"{group}.{topic}"


@dataclass
class _Registration(Generic[M]):
    et: EventType
    group: str
    fn: Handler
    failures: int = 0  # consecutive batches that had to be redelivered (their backoff)

    @property
    def consumer(self) -> str:
        """The inbox's name for this handler: one per (group, topic)."""
        return f"{self.group}:{self.et.topic}"


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
        replication_factor: int = 1,
        min_insync_replicas: int = 1,
        max_attempts: int = 3,
        max_deliveries: int = 5,
        retry_backoff_s: float = 0.5,
        max_retry_backoff_s: float = 30.0,
        max_batch: int = 100,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
        security: KafkaSecurity = PLAINTEXT,
    ) -> None:
        self.source = source
        self.db = db
        self.partitions = partitions
        self.topics = TopicSpec(partitions, replication_factor, min_insync_replicas)
        self.max_attempts = max_attempts
        self.max_deliveries = max_deliveries
        self.retry_backoff_s = retry_backoff_s
        self.max_retry_backoff_s = max_retry_backoff_s
        self.max_batch = max_batch
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.bootstrap = bootstrap
        self.security = security
        # acks=all and a short linger: each produce request is one object in
        # Tansu's S3 storage, so small batches cost far less than single sends.
        self.broker = _KafkaBroker(
            bootstrap, client_id=source, acks="all", linger_ms=5, logger=log, log_level=logging.DEBUG,
            max_request_size=MAX_DLQ_RECORD_BYTES,  # any record that reached a topic can be dead-lettered
            security=security.faststream(),
        )
        self.relay = outbox.OutboxRelay(db, self.broker, source=source) if db is not None else None
        self._registrations: list[_Registration] = []
        self._started = False

    # ---- consuming ----------------------------------------------------------

    @property
    def subscriptions(self) -> list[tuple[str, str]]:
        """(group, topic) of every registered handler: what a service consumes, known before it
        starts (the service catalogue is checked against it)."""
        return [(reg.group, reg.et.topic) for reg in self._registrations]

    def handler(
        self, message_type: type[M], *, group: str, middlewares: Sequence[type[BaseMiddleware]] = (),
    ) -> Callable[[Handler], Handler]:
        """Register `fn(msg, ctx)` for the topic of `message_type`, in consumer group `group`.

        `middlewares` wrap this subscriber's batches only (FastStream middlewares; `await
        msg.decode()` in one gives the batch's `Delivery`s).
        """

        def register(fn: Handler) -> Handler:
            if self._started:
                raise RuntimeError("register handlers before Bus.start()")
            reg = _Registration(event_type(message_type), group, fn)
            self._registrations.append(reg)

            async def consume(batch: Any, msg: KafkaMessage) -> None:
                for delivery in batch:
                    outcome = await self._process(reg, batch, delivery)
                    if REPLAYED_FROM in delivery.headers:
                        metrics.dlq_replayed.add(1, {"topic": reg.et.topic, "group": reg.group, "outcome": outcome})

            # The bus's own middleware comes first (outermost of the router's), so the inbox check
            # and the delivery count happen before any other middleware starts work on the batch.
            # A router scopes `middlewares` to this one subscriber (FastStream 0.7 takes
            # middlewares per broker or per router, not per subscriber).
            router = KafkaRouter(middlewares=(self._batch_middleware(reg), *middlewares))
            router.subscriber(
                reg.et.topic,
                group_id=kafka_group_id(group, reg.et.topic),
                batch=True,
                max_records=self.max_batch,
                auto_offset_reset="earliest",
                ack_policy=AckPolicy.NACK_ON_ERROR,
                decoder=_batch_decoder(reg.et),
                session_timeout_ms=self.session_timeout_ms,
                heartbeat_interval_ms=self.heartbeat_interval_ms,
                batch_timeout_ms=BATCH_TIMEOUT_MS,
            )(consume)
            self.broker.include_router(router)
            return fn

        return register

    def _batch_middleware(self, reg: _Registration) -> type[BaseMiddleware]:
        bus = self

        class BusBatch(BaseMiddleware):
            """Begins a batch (inbox check, delivery count) and turns a failure into a redelivery."""

            async def consume_scope(self, call_next, msg) -> Any:
                batch: Batch = await msg.decode()
                try:
                    await bus._begin(reg, batch)
                    result = await call_next(msg)
                except BaseException as exc:
                    # Not a death: an orderly stop, or a step that failed (the DLQ write, the
                    # database). Take the delivery count back, then let NACK_ON_ERROR seek every
                    # partition back to the batch's first record: nothing is committed past a
                    # record that was not finished, and the batch comes again after a backoff.
                    await bus._uncount(reg, batch)
                    if isinstance(exc, Exception):
                        reg.failures += 1
                        delay = min(bus.retry_backoff_s * 2 ** min(reg.failures - 1, 16), bus.max_retry_backoff_s)
                        log.error("batch of %s in group %s not finished (%s: %s); redelivering it in %.1f s",
                                  reg.et.topic, reg.group, type(exc).__name__, exc, delay)
                        metrics.batches_redelivered.add(1, {"topic": reg.et.topic, "group": reg.group,
                                                            "error": type(exc).__name__})
                        await asyncio.sleep(delay)
                    raise
                reg.failures = 0
                return result

        return BusBatch

    async def _begin(self, reg: _Registration, batch: Batch) -> None:
        """Mark what is already finished, and count this delivery, in one transaction committed
        BEFORE any handler or middleware works on the records: a delivery that kills the process
        (OOM-kill, segfault) is counted all the same.

        Normally one count per partition: its head (first unfinished record) was delivered once
        more. If the head's previous delivery never finished, one of the records then in flight
        killed the process: the batch turns careful, and each record is counted as it starts
        (`_process`), so only the one that kills the process again and again reaches the bound.
        """
        if self.db is None:
            return
        async with self.db.write() as s:
            for d in batch:
                d.done = outbox.finished(
                    s, reg.consumer, d.key, partition=d.record.partition, offset=d.record.offset,
                    replay=REPLAYED_FROM in d.headers,
                )
            heads: dict[int, int] = {}
            for d in batch:
                if d.done is None:
                    heads.setdefault(d.record.partition, d.record.offset)
            previous = outbox.delivery_counts(s, reg.consumer, list(heads))
            batch.careful = any(
                p in previous and previous[p][0] == offset and previous[p][1] > 0 for p, offset in heads.items()
            )
            if not batch.careful:
                for partition, offset in heads.items():
                    outbox.count_delivery(s, reg.consumer, partition, offset)
                    batch.counted[partition] = offset
        if batch.careful:
            metrics.batches_careful.add(1, {"topic": reg.et.topic, "group": reg.group})
            log.warning("the last delivery of %s in group %s died unfinished; handling this batch one record "
                        "at a time", reg.et.topic, reg.group)

    async def _uncount(self, reg: _Registration, batch: Batch) -> None:
        if self.db is None or not batch.counted:
            return
        try:
            async with self.db.write() as s:
                for partition, offset in batch.counted.items():
                    outbox.uncount_delivery(s, reg.consumer, partition, offset)
        except Exception:
            log.warning("could not take back the delivery counts of a %s batch", reg.et.topic, exc_info=True)

    async def _process(self, reg: _Registration, batch: Batch, delivery: Delivery) -> str:
        """Finish one record; returns how (the `outcome` of lineloop.events.consumed, or the DLQ's)."""
        labels = {"topic": reg.et.topic, "ce_type": reg.et.ce_type, "group": reg.group}
        record = delivery.record
        if delivery.done is not None:
            # Applied, or dead-lettered, on an earlier delivery: skipped, and the inbox says why.
            metrics.events_consumed.add(1, {**labels, "outcome": f"already_{delivery.done}"})
            return f"already_{delivery.done}"
        if batch.careful:
            async with self.db.write() as s:
                count = outbox.count_delivery(s, reg.consumer, record.partition, record.offset)
            batch.counted[record.partition] = record.offset
            if count > self.max_deliveries:
                await self._dead_letter(reg, delivery, "poison", (
                    f"delivered {count - 1} time{'s' if count != 2 else ''} without finishing (the process died while handling it); "
                    f"the limit is {self.max_deliveries}"))
                return "dead_lettered"
        if delivery.refused is not None:
            await self._dead_letter(reg, delivery, delivery.refused.reason, delivery.refused.detail)
            return "dead_lettered"
        message, env = delivery.message, delivery.envelope
        parent = propagate.extract(delivery.headers)
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
                    applied = await self._apply(reg, message, ctx, delivery.key)
                    outcome = "applied" if applied else "duplicate"
                    metrics.events_consumed.add(1, {**labels, "outcome": outcome})
                    return outcome
                except Reject as rej:
                    outcome = "rejected"
                    await self._dead_letter(reg, delivery, rej.reason, rej.detail)
                    return "dead_lettered"
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
                            log.exception("handler %s failed %d times on %s; dead-lettering",
                                          reg.fn.__name__, errors, env.id)
                            await self._dead_letter(reg, delivery, "handler_error", f"{type(exc).__name__}: {exc}")
                            return "dead_lettered"
                        delay = self.retry_backoff_s * errors
                        log.warning("handler %s failed on %s (attempt %d): %s", reg.fn.__name__, env.id, errors, exc)
                    metrics.handler_retries.add(1, {**labels, "reason": outcome})
                finally:
                    metrics.handler_duration.record(time.perf_counter() - started, {**labels, "outcome": outcome})
            await asyncio.sleep(delay)

    async def _apply(self, reg: _Registration, message: Message, ctx: EventContext, key: str) -> bool:
        """Run the handler once per (group, ce_id); False if it was already applied."""
        if self.db is None:
            await reg.fn(message, ctx)
            return True
        try:
            async with self.db.write() as session:
                if outbox.finished(session, reg.consumer, key, partition=ctx.partition, offset=ctx.offset,
                                   replay=REPLAYED_FROM in ctx.envelope.headers) == "applied":
                    return False
                ctx.session = session
                await reg.fn(message, ctx)
                outbox.mark_applied(session, reg.consumer, key, reg.et.topic)
        except IntegrityError:
            # Another replica applied the same event first (rebalance redelivery): its inbox row
            # won the primary key. Anything else is the handler's own error.
            with self.db.session() as session:
                if outbox.finished(session, reg.consumer, key, partition=ctx.partition, offset=ctx.offset,
                                   replay=False) == "applied":
                    return False
            raise
        if ctx.emitted and self.relay is not None:
            self.relay.wake()
        return True

    async def _dead_letter(self, reg: _Registration, delivery: Delivery, reason: str, detail: str) -> None:
        """Publish to the DLQ and wait for its ack, then record the refusal; either failing raises."""
        record = delivery.record
        log.warning(
            "dead-lettering %s (%s): %s", delivery.where, reason, detail,
            extra={"dlq_reason": reason, "topic": record.topic},
        )
        dlq_headers = {
            **{k: v for k, v in delivery.headers.items() if k != "correlation_id"},
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
        # A crash here leaves the record unmarked: it is dead-lettered again on redelivery (a
        # duplicate DLQ record, never a lost one). Replicas racing on one key both upsert.
        if self.db is not None:
            async with self.db.write() as s:
                outbox.mark_dead_lettered(
                    s, reg.consumer, delivery.key, topic=record.topic, partition=record.partition,
                    offset=record.offset, reason=reason,
                )
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
        """Create the event topics and their DLQs (idempotent), as `self.topics` says (lineloop.bus.topics)."""
        await create_missing_topics(self.bootstrap, self.topics, topics, client_id=f"{self.source}-admin",
                                    security=self.security)

    async def start(self, *, join: bool = True) -> None:
        """Topics, producer, consumers and the outbox relay. With `join=False` the consumers join
        their groups in the background (see `_KafkaBroker`); `joined()` waits for them."""
        if self.db is not None:
            outbox.migrate(self.db)
        await self.ensure_topics()
        self.broker.join_in_background = not join
        await self.broker.start()
        self._started = True
        if self.relay is not None:
            self.relay.start()

    async def joined(self) -> None:
        await self.broker.joined()

    async def stop(self) -> None:
        if self.relay is not None:
            await self.relay.stop()
        await self.broker.stop()
        self._started = False


class _KafkaBroker(KafkaBroker):
    """FastStream's broker, starting its subscribers together instead of one after another.

    A consumer's start waits until its group is joined, and the broker holds a new group's join
    open for other members (Tansu: half the session timeout, 5 s by default). One after another,
    a service with three subscriptions (a group each) took 15 s to start; together, one join.

    With `join_in_background`, start() returns once the broker is connected and the consumers
    join in a task of their own (retried until they do): a service answers gRPC health without
    waiting out the join. Nothing is missed meanwhile: a group resumes from its committed
    offsets, a new group from the earliest record.
    """

    join_in_background = False
    _joining: asyncio.Task | None = None

    async def start(self) -> None:
        await self.connect()
        for pub in self.publishers:
            await pub.start()
        if self.join_in_background:
            self._joining = asyncio.create_task(self._join_until_joined(), name="bus-consumers-join")
        else:
            await asyncio.gather(*(sub.start() for sub in self.subscribers))
        self.running = True

    async def _join_until_joined(self) -> None:
        pending, delay = list(self.subscribers), 1.0
        while pending:
            results = await asyncio.gather(*(sub.start() for sub in pending), return_exceptions=True)
            failed = []
            for sub, result in zip(pending, results, strict=True):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                if isinstance(result, BaseException):
                    log.warning("consumer of %s did not start (%s); retrying in %.0f s",
                                getattr(sub, "topics", "?"), result, delay)
                    try:
                        await sub.stop()  # what the failed start left half made
                    except Exception:
                        log.debug("stopping a consumer that did not start failed", exc_info=True)
                    failed.append(sub)
            pending = failed
            if pending:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def joined(self) -> None:
        """Returns once every consumer has joined its group (at once when they joined in start())."""
        if self._joining is not None:
            await asyncio.shield(self._joining)

    async def stop(self, *args: Any, **kwargs: Any) -> None:
        if self._joining is not None:
            self._joining.cancel()
            try:
                await self._joining
            except (asyncio.CancelledError, Exception):
                pass
            self._joining = None
        await super().stop(*args, **kwargs)


def _batch_decoder(et: EventType) -> Callable[[StreamMessage[Any]], Awaitable[Batch]]:
    """FastStream decoder for one topic's batches: each record decoded, or refused with why.

    A refusal is data, not an exception: one bad record must not fail the batch around it.
    """

    async def decode_batch(msg: StreamMessage[Any]) -> Batch:
        raw = msg.raw_message
        deliveries = []
        for record in raw if isinstance(raw, tuple) else (raw,):
            headers = header_dict(record.headers)
            try:
                message, envelope = decode(et, record.value, headers)
            except Reject as rej:
                deliveries.append(Delivery(record, headers, refused=rej))
            else:
                deliveries.append(Delivery(record, headers, message, envelope))
        return Batch(deliveries)

    return decode_batch
