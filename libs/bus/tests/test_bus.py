"""The bus on the real broker: headers, tracing, inbox, outbox, DLQ, consumer groups,
offsets that never pass an unfinished record, the poison bound.

Every test uses its own consumer group and marks its events with a unique
model name, because the session's broker is shared with other tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError
from opentelemetry import trace
from sqlalchemy import Column, MetaData, String, Table, func, select

from lineloop.bus import Bus, EventContext, Reject
from lineloop.bus import outbox as outbox_mod
from lineloop.contracts.topics import event_type
from lineloop.storage.sql import Database
from lineloop.telemetry import capture_spans, setup_telemetry
from lineloop.v1 import events_pb2

TOPIC = event_type(events_pb2.TrainingRequested).topic
FAST = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}
# Flows whose SQL is the bus's own (inbox, outbox, delivery counts), which the SQLite runs of the
# other tests here already exercise: run on PostgreSQL, the production database, only.
POSTGRES_ONLY = pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)

applied_meta = MetaData()
applied = Table(
    "test_applied", applied_meta,
    Column("ce_id", String(64), primary_key=True),
    Column("model_name", String(64), nullable=False),
    Column("reason", String(64), nullable=False),
)


async def eventually(check: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def applied_rows(db: Database, model: str) -> list:
    with db.session() as s:
        return s.execute(select(applied).where(applied.c.model_name == model)).all()


def make_db(url: str) -> Database:
    db = Database(url)
    db.migrate("test", 1, applied_meta)
    outbox_mod.migrate(db)
    return db


def recording_handler(bus: Bus, group: str, model: str, seen: list, *, emit: bool = False):
    @bus.handler(events_pb2.TrainingRequested, group=group)
    async def on_training_requested(msg: events_pb2.TrainingRequested, ctx: EventContext) -> None:
        if msg.model_name != model:
            return
        if msg.reason == "poison":
            raise Reject("invalid_request", "reason 'poison' is refused")
        if msg.reason == "bug":
            raise ValueError("the handler cannot cope with 'bug'")
        seen.append((ctx.event_id, ctx.partition, trace.get_current_span().get_span_context()))
        ctx.session.execute(applied.insert().values(ce_id=ctx.event_id, model_name=model, reason=msg.reason))
        if emit:
            ctx.emit(events_pb2.DriftDetected(drift_id=ctx.event_id, line_id=model))
    return on_training_requested


async def read_topic(bootstrap: str, topic: str, want: Callable[[list], bool], timeout: float = 30.0) -> list:
    """The topic's records from the beginning until `want(records)`. No consumer group: the reader
    assigns itself every partition, so there is no group join to wait for (seconds on the broker)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    records: list = []
    try:
        await consumer.topics()  # refreshes the metadata partitions_for_topic reads
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        assert partitions, f"no partitions for {topic}"
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = asyncio.get_running_loop().time() + timeout
        while not want(records) and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for recs in batch.values():
                records.extend(recs)
    finally:
        await consumer.stop()
    return records


@pytest.fixture
def db(tmp_path) -> Database:
    return make_db(f"sqlite:///{tmp_path / 'svc.db'}")


async def test_round_trip_carries_cloudevents_headers_and_continues_the_trace(stack, db):
    setup_telemetry("bus-tests", metrics_port=None, log_format="console")
    spans = capture_spans()
    model = f"m-{uuid.uuid4()}"
    seen: list = []
    producer = Bus(stack.kafka_bootstrap, source="test/producer")
    consumer = Bus(stack.kafka_bootstrap, source="test/consumer", db=db, **FAST)
    recording_handler(consumer, f"g-{uuid.uuid4()}", model, seen)
    await producer.start()
    await consumer.start()
    try:
        event_id = await producer.publish(events_pb2.TrainingRequested(model_name=model, reason="drift"))
        await eventually(lambda: len(seen) == 1, what="the event to be consumed")
    finally:
        await consumer.stop()
        await producer.stop()

    assert seen[0][0] == event_id
    records = await read_topic(stack.kafka_bootstrap, TOPIC, lambda rs: any(
        dict(r.headers).get("ce_id") == event_id.encode() for r in rs))
    record = next(r for r in records if dict(r.headers).get("ce_id") == event_id.encode())
    headers = {k: v.decode() for k, v in record.headers}
    assert headers["ce_specversion"] == "1.0"
    assert headers["ce_type"] == "lineloop.v1.TrainingRequested"
    assert headers["ce_source"] == "test/producer"
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["ce_time"].endswith("Z")
    assert headers["traceparent"].startswith("00-")
    assert record.key == model.encode()
    assert events_pb2.TrainingRequested.FromString(record.value).reason == "drift"

    finished = spans.get_finished_spans()
    send = next(s for s in finished if s.name == f"{TOPIC} send" and s.attributes["messaging.message.id"] == event_id)
    process = next(s for s in finished if s.name == f"{TOPIC} process" and s.attributes["messaging.message.id"] == event_id)
    assert process.context.trace_id == send.context.trace_id
    assert process.parent.span_id == send.context.span_id
    assert headers["traceparent"].split("-")[1] == f"{send.context.trace_id:032x}"


async def test_redelivered_event_is_applied_once(stack, database_url):
    db = make_db(database_url)
    model = f"m-{uuid.uuid4()}"
    seen: list = []
    producer = Bus(stack.kafka_bootstrap, source="test/producer")
    consumer = Bus(stack.kafka_bootstrap, source="test/consumer", db=db, **FAST)
    recording_handler(consumer, f"g-{uuid.uuid4()}", model, seen)
    await producer.start()
    await consumer.start()
    try:
        same_id = str(uuid.uuid4())
        for _ in range(3):  # a producer retry, a replay after a rebalance, ...
            await producer.publish(events_pb2.TrainingRequested(model_name=model, reason="again"), event_id=same_id)
        await producer.publish(events_pb2.TrainingRequested(model_name=model, reason="last"))
        await eventually(lambda: any(r.reason == "last" for r in applied_rows(db, model)), what="the last event")
    finally:
        await consumer.stop()
        await producer.stop()
    rows = applied_rows(db, model)
    assert sorted(r.reason for r in rows) == ["again", "last"]
    assert len(seen) == 2


async def test_poison_messages_go_to_the_dlq_and_valid_ones_behind_them_are_processed(stack, db):
    model = f"m-{uuid.uuid4()}"
    group = f"g-{uuid.uuid4()}"
    seen: list = []
    consumer = Bus(stack.kafka_bootstrap, source="test/consumer", db=db, **FAST)
    recording_handler(consumer, group, model, seen)
    await consumer.start()
    raw = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
    await raw.start()
    good = events_pb2.TrainingRequested(model_name=model, reason="good").SerializeToString()

    def headers(**over: str | None) -> list[tuple[str, bytes]]:
        base = {"ce_specversion": "1.0", "ce_id": str(uuid.uuid4()), "ce_source": "test/raw",
                "ce_type": "lineloop.v1.TrainingRequested", "content-type": "application/x-protobuf",
                "x-test-run": model}  # other records on the shared topic reach this group's DLQ too
        base.update(over)
        return [(k, v.encode()) for k, v in base.items() if v is not None]

    poison = {
        "undecodable": (b"\xff\xfe garbage \x00", headers()),
        "wrong_type": (good, headers(ce_type="lineloop.v1.FrameCaptured")),
        "missing_header": (good, headers(ce_id=None)),
        "unsupported_content_type": (b"{}", headers(**{"content-type": "application/json"})),
        "invalid_request": (events_pb2.TrainingRequested(model_name=model, reason="poison").SerializeToString(), headers()),
        # A handler that keeps failing (not on a dependency that is down) gives up after its attempts.
        "handler_error": (events_pb2.TrainingRequested(model_name=model, reason="bug").SerializeToString(), headers()),
    }
    try:
        key = model.encode()  # one key: one partition, so order is the test
        for value, hdrs in poison.values():
            await raw.send_and_wait(TOPIC, value, key=key, headers=hdrs)
        await raw.send_and_wait(TOPIC, good, key=key, headers=headers())
        await eventually(lambda: len(applied_rows(db, model)) == 1, what="the valid message")
    finally:
        await raw.stop()
        await consumer.stop()

    def ours(records: list) -> list[dict[str, str]]:
        return [{k: v.decode() for k, v in r.headers} for r in records
                if dict(r.headers).get("dlq_consumer_group") == group.encode()
                and dict(r.headers).get("x-test-run") == model.encode()]

    dlq = ours(await read_topic(stack.kafka_bootstrap, f"{TOPIC}.dlq", lambda rs: len(ours(rs)) >= len(poison)))
    assert sorted(h["dlq_reason"] for h in dlq) == sorted(poison)
    assert all(h["dlq_topic"] == TOPIC and h["dlq_detail"] for h in dlq)
    assert {h["dlq_reason"]: h["dlq_detail"] for h in dlq}["handler_error"] == "ValueError: the handler cannot cope with 'bug'"


async def test_two_consumers_in_one_group_split_the_partitions(stack, tmp_path):
    model = f"m-{uuid.uuid4()}"
    group = f"g-{uuid.uuid4()}"
    seen_a: list = []
    seen_b: list = []
    db_a, db_b = make_db(f"sqlite:///{tmp_path / 'a.db'}"), make_db(f"sqlite:///{tmp_path / 'b.db'}")
    a = Bus(stack.kafka_bootstrap, source="test/a", db=db_a, **FAST)
    b = Bus(stack.kafka_bootstrap, source="test/b", db=db_b, **FAST)
    recording_handler(a, group, model, seen_a)
    recording_handler(b, group, model, seen_b)
    producer = Bus(stack.kafka_bootstrap, source="test/producer")
    await producer.start()
    await a.start()
    await b.start()
    try:
        # Wait until the group has settled with both members before producing.
        await eventually(lambda: _assigned(a) and _assigned(b), timeout=40, what="both consumers to get partitions")
        parts_a, parts_b = _assigned(a), _assigned(b)
        assert parts_a.isdisjoint(parts_b)
        assert len(parts_a | parts_b) == a.partitions
        for i in range(30):
            await producer.publish(events_pb2.TrainingRequested(model_name=model, reason=str(i)), key=f"k{i}".encode())
        await eventually(lambda: len(seen_a) + len(seen_b) == 30, what="all 30 events")
    finally:
        await a.stop()
        await b.stop()
        await producer.stop()
    assert seen_a and seen_b
    assert {p for _, p, _ in seen_a}.isdisjoint({p for _, p, _ in seen_b})
    assert len({e for e, _, _ in seen_a + seen_b}) == 30


async def test_consumers_joining_in_the_background_miss_nothing_published_meanwhile(stack, tmp_path):
    """start(join=False) (how a service starts, so its health does not wait out the group join)
    returns before the group is joined; what is published meanwhile is consumed once it is."""
    model = f"m-{uuid.uuid4()}"
    seen: list = []
    consumer = Bus(stack.kafka_bootstrap, source="test/consumer", db=make_db(f"sqlite:///{tmp_path / 'c.db'}"),
                   **FAST)
    recording_handler(consumer, f"g-{uuid.uuid4()}", model, seen)
    producer = Bus(stack.kafka_bootstrap, source="test/producer")
    await producer.start()
    await consumer.start(join=False)
    try:
        assert _assigned(consumer) == set()  # started, not joined yet (the broker holds a new group's join)
        for i in range(5):
            await producer.publish(events_pb2.TrainingRequested(model_name=model, reason=str(i)))
        await asyncio.wait_for(consumer.joined(), 40)
        assert len(_assigned(consumer)) == consumer.partitions
        await eventually(lambda: len(seen) == 5, what="the 5 events published before the join")
    finally:
        await consumer.stop()
        await producer.stop()


def _assigned(bus: Bus) -> set[int]:
    subscriber = next(iter(bus.broker.subscribers))
    consumer = getattr(subscriber, "consumer", None)
    if consumer is None:
        return set()
    return {tp.partition for tp in consumer.assignment()}


_CRASHING_PRODUCER = textwrap.dedent("""
    import os, sys
    from lineloop.bus import outbox
    from lineloop.storage.sql import Database
    from lineloop.v1 import events_pb2
    db = Database(sys.argv[1])
    outbox.migrate(db)
    with db.transaction() as s:
        outbox.add(s, events_pb2.TrainingRequested(model_name=sys.argv[2], reason="after-crash"), source="test/crasher")
    os._exit(9)  # killed after the commit, before any relay ran
""")


async def test_event_committed_before_a_crash_is_published_after_restart_exactly_once_in_effect(
    stack, database_url, tmp_path
):
    db = make_db(database_url)
    model = f"m-{uuid.uuid4()}"
    proc = subprocess.run([sys.executable, "-c", _CRASHING_PRODUCER, database_url, model],
                          capture_output=True, env=os.environ, timeout=60)
    assert proc.returncode == 9, proc.stderr.decode()
    assert outbox_mod.pending(db) == 1

    consumer_db = make_db(f"sqlite:///{tmp_path / 'consumer.db'}")  # the consuming service's own state
    seen: list = []
    consumer = Bus(stack.kafka_bootstrap, source="test/consumer", db=consumer_db, **FAST)
    recording_handler(consumer, f"g-{uuid.uuid4()}", model, seen)
    await consumer.start()
    restarted = Bus(stack.kafka_bootstrap, source="test/crasher", db=db)
    await restarted.broker.start()
    try:
        # The crash can also land after the send but before the row is deleted:
        # send the pending row once by hand, leave it, and let the relay resend.
        with db.session() as s:
            row = s.execute(select(outbox_mod.outbox)).one()
        await restarted.broker.publish(row.value, topic=row.topic, key=row.key, headers=json.loads(row.headers))
        assert await restarted.relay.flush() == 1
        assert outbox_mod.pending(db) == 0
        # A marker behind both copies, on their partition (same key): once the consumer has applied
        # it, it has had the duplicate too (a bounded wait on processed input, not on the clock).
        await restarted.publish(events_pb2.TrainingRequested(model_name=model, reason="marker"), key=row.key)
        await eventually(lambda: any(r.reason == "marker" for r in applied_rows(consumer_db, model)), what="the marker")
    finally:
        await restarted.broker.stop()
        await consumer.stop()
    assert sorted(r.reason for r in applied_rows(consumer_db, model)) == ["after-crash", "marker"]
    assert len(seen) == 2  # the duplicate was not handed to the handler either


async def test_handler_state_and_emitted_events_commit_together(stack, database_url):
    db = make_db(database_url)
    model = f"m-{uuid.uuid4()}"
    seen: list = []
    producer = Bus(stack.kafka_bootstrap, source="test/producer")
    consumer = Bus(stack.kafka_bootstrap, source="test/consumer", db=db, **FAST)
    recording_handler(consumer, f"g-{uuid.uuid4()}", model, seen, emit=True)
    await producer.start()
    await consumer.start()
    try:
        event_id = await producer.publish(events_pb2.TrainingRequested(model_name=model, reason="x"))
        drift_topic = event_type(events_pb2.DriftDetected).topic
        records = await read_topic(stack.kafka_bootstrap, drift_topic, lambda rs: any(
            events_pb2.DriftDetected.FromString(r.value).drift_id == event_id for r in rs))
    finally:
        await consumer.stop()
        await producer.stop()
    emitted = [r for r in records if events_pb2.DriftDetected.FromString(r.value).drift_id == event_id]
    assert len(emitted) == 1
    assert dict(emitted[0].headers)["ce_source"] == b"test/consumer"
    assert len(applied_rows(db, model)) == 1
    with db.session() as s:
        assert s.execute(select(func.count()).select_from(outbox_mod.inbox)).scalar_one() >= 1
    assert outbox_mod.pending(db) == 0


def dlq_records_of(group: str, records: list) -> list[dict[str, str]]:
    return [{k: v.decode() for k, v in r.headers} for r in records
            if dict(r.headers).get("dlq_consumer_group") == group.encode()]


@POSTGRES_ONLY
async def test_a_failed_dlq_write_rewinds_the_batch_instead_of_committing_past_it(stack, database_url):
    db = make_db(database_url)
    model = f"m-{uuid.uuid4()}"
    group = f"g-{uuid.uuid4()}"
    seen: list = []
    consumer = Bus(stack.kafka_bootstrap, source="test/consumer", db=db, retry_backoff_s=0.1, **FAST)
    recording_handler(consumer, group, model, seen)

    # The DLQ is unreachable for the bad record's first two writes (the broker refuses the produce).
    bad = str(uuid.uuid4())
    publish = consumer.broker.publish
    dlq_failures: list[str] = []

    async def flaky_publish(*args, topic: str, headers: dict, **kwargs):
        if topic.endswith(".dlq") and headers.get("ce_id") == bad and len(dlq_failures) < 2:
            dlq_failures.append(topic)
            raise KafkaConnectionError("injected: the DLQ partition's leader is unreachable")
        return await publish(*args, topic=topic, headers=headers, **kwargs)

    consumer.broker.publish = flaky_publish
    producer = Bus(stack.kafka_bootstrap, source="test/producer")
    await producer.start()
    key = model.encode()  # one partition: the records behind the bad one are the test
    try:
        await producer.publish(events_pb2.TrainingRequested(model_name=model, reason="poison"), key=key, event_id=bad)
        for reason in ("behind-1", "behind-2"):
            await producer.publish(events_pb2.TrainingRequested(model_name=model, reason=reason), key=key)
        await consumer.start()  # the three come in one batch
        await eventually(lambda: dlq_failures, what="the first injected DLQ failure")
        # Later traffic: before the fix, its batch's commit moved the offset past the records above.
        await producer.publish(events_pb2.TrainingRequested(model_name=model, reason="later"), key=key)
        await eventually(lambda: len(applied_rows(db, model)) == 3, what="every good record applied")
    finally:
        await consumer.stop()
        await producer.stop()
    assert sorted(r.reason for r in applied_rows(db, model)) == ["behind-1", "behind-2", "later"]
    assert len(dlq_failures) == 2  # the bad record was redelivered after each failed DLQ write
    dlq = dlq_records_of(group, await read_topic(
        stack.kafka_bootstrap, f"{TOPIC}.dlq", lambda rs: any(h.get("ce_id") == bad for h in dlq_records_of(group, rs))))
    assert [h["dlq_reason"] for h in dlq if h.get("ce_id") == bad] == ["invalid_request"]

    # And after a restart nothing is redone: the commit covers exactly what was finished.
    seen.clear()
    restarted = Bus(stack.kafka_bootstrap, source="test/consumer", db=db, **FAST)
    recording_handler(restarted, group, model, seen)
    await restarted.start()
    try:
        producer = Bus(stack.kafka_bootstrap, source="test/producer")
        await producer.start()
        await producer.publish(events_pb2.TrainingRequested(model_name=model, reason="after-restart"), key=key)
        await producer.stop()
        await eventually(lambda: len(applied_rows(db, model)) == 4, what="the record after the restart")
    finally:
        await restarted.stop()
    assert [s[0] for s in seen] and len(seen) == 1


_CRASHING_CONSUMER = textwrap.dedent("""
    import asyncio, os, sys
    from faststream import BaseMiddleware
    from lineloop.bus import Bus
    from lineloop.v1 import events_pb2
    from test_bus import FAST, applied, make_db

    bootstrap, url, group, model = sys.argv[1:5]

    def kills(d) -> bool:
        return d.pending and d.message.model_name == model and d.message.reason == "kill"

    class PrepareTheWholeBatch(BaseMiddleware):
        # Like ingest's prefetch: work on every record of the batch at once, before the handler.
        async def consume_scope(self, call_next, msg):
            batch = await msg.decode()
            if not batch.careful and any(kills(d) for d in batch):
                os._exit(137)  # what an OOM-kill looks like to the bus: nothing runs after it
            return await call_next(msg)

    async def main() -> None:
        db = make_db(url)
        bus = Bus(bootstrap, source="test/crashing", db=db, max_deliveries=1, **FAST)
        done = asyncio.Event()

        @bus.handler(events_pb2.TrainingRequested, group=group, middlewares=[PrepareTheWholeBatch])
        async def on_training_requested(msg, ctx):
            if msg.model_name != model:
                return
            if msg.reason == "kill":
                os._exit(137)
            ctx.session.execute(applied.insert().values(ce_id=ctx.event_id, model_name=model, reason=msg.reason))
            if msg.reason == "behind":
                done.set()

        await bus.start()
        try:
            await asyncio.wait_for(done.wait(), 60)
        finally:
            await bus.stop()

    asyncio.run(main())
""")


@pytest.mark.postgres
async def test_a_record_that_keeps_killing_the_process_is_dead_lettered_after_max_deliveries(stack, postgres_url):
    # PostgreSQL only (the counting SQL is the same on SQLite, which other tests here run), and a
    # bound of one delivery: each process start costs seconds.
    database_url = postgres_url
    db = make_db(database_url)
    model = f"m-{uuid.uuid4()}"
    group = f"g-{uuid.uuid4()}"
    producer = Bus(stack.kafka_bootstrap, source="test/producer")
    await producer.start()
    try:
        key = model.encode()  # one partition, in this order: the killer is not the batch's head
        await producer.publish(events_pb2.TrainingRequested(model_name=model, reason="ahead"), key=key)
        killer = await producer.publish(events_pb2.TrainingRequested(model_name=model, reason="kill"), key=key)
        await producer.publish(events_pb2.TrainingRequested(model_name=model, reason="behind"), key=key)
    finally:
        await producer.stop()

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    exits = []
    for _ in range(6):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CRASHING_CONSUMER, stack.kafka_bootstrap, database_url, group, model,
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 120)
        exits.append(proc.returncode)
        if proc.returncode == 0:
            break
        assert proc.returncode == 137, err.decode()[-3000:]
    # 1: the whole batch in flight dies. 2: careful, one record at a time: 'ahead' is applied, the
    # killer dies (its 1st counted delivery). 3: at the bound of 1: DLQ, and the record behind it
    # is applied. The innocent head of the first batch is never dead-lettered.
    assert exits == [137, 137, 0]
    assert sorted(r.reason for r in applied_rows(db, model)) == ["ahead", "behind"]
    dlq = dlq_records_of(group, await read_topic(
        stack.kafka_bootstrap, f"{TOPIC}.dlq", lambda rs: any(h.get("ce_id") == killer for h in dlq_records_of(group, rs))))
    poison = [h for h in dlq if h.get("ce_id") == killer]
    assert [h["dlq_reason"] for h in poison] == ["poison"]
    assert "delivered 1 time without finishing" in poison[0]["dlq_detail"]


async def dlq_cli(stack, *args: str) -> tuple[int, str, str]:
    # A subprocess, awaited: the consumer under test runs on this same event loop.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lineloop.cli.main", "dlq", *args,
        env={**os.environ, **stack.env(), "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode(), err.decode()


@POSTGRES_ONLY
async def test_dlq_list_then_replay_after_the_fix_applies_the_event_once(stack, database_url, monkeypatch):
    db = make_db(database_url)
    model = f"m-{uuid.uuid4()}"
    group = f"g-{uuid.uuid4()}"
    fixed = False

    consumer = Bus(stack.kafka_bootstrap, source="test/consumer", db=db, retry_backoff_s=0.1, **FAST)

    @consumer.handler(events_pb2.TrainingRequested, group=group)
    async def on_training_requested(msg: events_pb2.TrainingRequested, ctx: EventContext) -> None:
        if msg.model_name != model:
            return
        if msg.reason == "needs-fix" and not fixed:
            raise Reject("unknown_line", "no such line yet")
        if msg.reason == "dlq-down":
            raise Reject("invalid_request", "refused while the DLQ is down")
        ctx.session.execute(applied.insert().values(ce_id=ctx.event_id, model_name=model, reason=msg.reason))

    # Redelivery: the DLQ write for the record behind the refused one fails once, so the
    # batch (the refused record with it) is redelivered; the refused record must be skipped.
    publish = consumer.broker.publish
    failed: list[str] = []

    async def flaky_publish(*args, topic: str, headers: dict, **kwargs):
        if topic.endswith(".dlq") and headers.get("dlq_reason") == "invalid_request" and not failed:
            failed.append(topic)
            raise KafkaConnectionError("injected: DLQ unreachable")
        return await publish(*args, topic=topic, headers=headers, **kwargs)

    consumer.broker.publish = flaky_publish
    outcomes: list[tuple[str, str | None]] = []
    finished = outbox_mod.finished

    def recording_finished(s, consumer_name, key, **kw):
        result = finished(s, consumer_name, key, **kw)
        outcomes.append((key, result))
        return result

    monkeypatch.setattr(outbox_mod, "finished", recording_finished)
    producer = Bus(stack.kafka_bootstrap, source="test/producer")
    await producer.start()
    key = model.encode()
    try:
        refused = await producer.publish(events_pb2.TrainingRequested(model_name=model, reason="needs-fix"), key=key)
        await producer.publish(events_pb2.TrainingRequested(model_name=model, reason="dlq-down"), key=key)
        await consumer.start()  # both records come in one batch

        async def ours() -> list[dict]:
            rc, out, err = await dlq_cli(stack, "list", "--topic", TOPIC, "--json")
            assert rc == 0, err
            return [r for r in json.loads(out) if r["consumer_group"] == group]

        deadline = asyncio.get_running_loop().time() + 60
        while len(listed := await ours()) < 2 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.5)
        assert failed and (refused, "dead_lettered") in outcomes  # it was redelivered, and skipped
        [entry] = [r for r in listed if r["ce_id"] == refused]  # dead-lettered once, not twice
        assert entry["reason"] == "unknown_line" and entry["detail"] == "no such line yet"
        assert entry["topic"] == TOPIC and entry["replays"] == []

        rc, out, err = await dlq_cli(stack, "show", entry["dlq"], "--json")
        assert rc == 0, err
        shown = json.loads(out)
        assert shown["payload"] == {"model_name": model, "reason": "needs-fix"}
        assert shown["headers"]["ce_id"] == refused and shown["payload_bytes"] > 0

        rc, _, err = await dlq_cli(stack, "replay", "--topic", TOPIC, "--reason", "no-such-reason", "--all")
        assert rc == 1 and "no DLQ record matches" in err

        fixed = True  # the line now exists
        partition, offset = entry["partition"], entry["offset"]
        rc, out, err = await dlq_cli(stack, "replay", "--topic", TOPIC, "--offset", f"{partition}/{offset}", "--json")
        assert rc == 0, err
        assert [r["ce_id"] for r in json.loads(out)] == [refused]
        await eventually(lambda: any(r.ce_id == refused for r in applied_rows(db, model)), what="the replayed event")

        rc, _, err = await dlq_cli(stack, "replay", "--topic", TOPIC, "--offset", f"{partition}/{offset}")
        assert rc == 1 and "already replayed" in err
        rc, out, err = await dlq_cli(stack, "replay", "--topic", TOPIC, "--offset", f"{partition}/{offset}", "--again")
        assert rc == 0, err
        await producer.publish(events_pb2.TrainingRequested(model_name=model, reason="last"), key=key)
        await eventually(lambda: any(r.reason == "last" for r in applied_rows(db, model)), what="the last event")
    finally:
        await consumer.stop()
        await producer.stop()
    assert sorted(r.reason for r in applied_rows(db, model)) == ["last", "needs-fix"]  # applied once
    [entry] = [r for r in await ours() if r["ce_id"] == refused]
    assert len(entry["replays"]) == 2


@pytest.mark.postgres
async def test_two_replicas_on_one_postgres_database_apply_once_and_count_each_partition_apart(stack, postgres_url):
    db_a, db_b = make_db(postgres_url), make_db(postgres_url)  # two processes' engines, one database
    model = f"m-{uuid.uuid4()}"
    group = f"g-{uuid.uuid4()}"
    seen_a: list = []
    seen_b: list = []
    a = Bus(stack.kafka_bootstrap, source="test/a", db=db_a, **FAST)
    b = Bus(stack.kafka_bootstrap, source="test/b", db=db_b, **FAST)
    recording_handler(a, group, model, seen_a)
    recording_handler(b, group, model, seen_b)
    producer = Bus(stack.kafka_bootstrap, source="test/producer")
    await producer.start()
    await a.start()
    await b.start()
    try:
        await eventually(lambda: _assigned(a) and _assigned(b), timeout=40, what="both replicas to get partitions")
        for i in range(30):
            await producer.publish(events_pb2.TrainingRequested(model_name=model, reason=str(i)), key=f"k{i}".encode())
        await eventually(lambda: len(applied_rows(db_a, model)) == 30, what="all 30 events")
    finally:
        await a.stop()
        await b.stop()
        await producer.stop()
    assert seen_a and seen_b and len(seen_a) + len(seen_b) == 30
    with db_a.session() as s:
        rows = s.execute(select(outbox_mod.deliveries).where(outbox_mod.deliveries.c.consumer == f"{group}:{TOPIC}")).all()
    # One row per partition, each replica counting its own; nobody died, so no head was delivered twice.
    assert sorted(r.partition for r in rows) == list(range(a.partitions))
    assert all(r.deliveries == 1 for r in rows)
