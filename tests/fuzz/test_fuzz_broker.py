"""One end-to-end round through the real broker: a running ingest service (its consumers,
inbox, outbox, DLQ) gets hundreds of bad records mixed with good frames, from a plain
Kafka producer as a gateway would send them.

Every record is accounted for exactly once: a good frame in frames.ingested.v1, a bad one
in frames.captured.v1.dlq with its reason (headers or value unusable) or in
frames.rejected.v1 with its reason (a well-formed event whose frame is refused). A
generated event that happens to be a valid frame may be ingested: that is correct too.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from hypothesis import strategies as st

from lineloop.bus.cloudevents import JSON
from lineloop.contracts.topics import event_type
from lineloop.ingest.testing import frame, ingest_settings, jpeg, running_ingest, skip_group_to_end
from lineloop.v1.events_pb2 import FrameCaptured, FrameIngested, FrameRejected, RejectReason
from tests.fuzz.harness import CASES, record, run_cases
from tests.fuzz.strategies import bad_headers, good_headers, messages
from tests.fuzz.test_fuzz_handlers import OVERRIDES

CAPTURED = event_type(FrameCaptured)
GOOD_EVERY = 10  # one good frame per this many bad records
WAIT_S = 240.0


def _collect(target: str, strategy: st.SearchStrategy, count: int) -> list:
    """`count` diverse values drawn by hypothesis (its generator, not its test runner's checks)."""
    found: list = []

    def keep(value) -> str:
        found.append(value)
        return "drawn"

    run_cases(target, strategy, keep, cases=count, tally=False)
    return found[:count]


def bad_records(count: int, line: str) -> list[tuple[str, dict[str, str], bytes, str]]:
    """(kind, headers, value, expected DLQ reason or "" when a rejection or an ingest are both right)."""
    good_value = frame(jpeg(seed=3), line=line).SerializeToString()
    per_kind = max(count // 4, 1)
    records = []
    for headers, reason in _collect("e2e:draw:bad_headers", bad_headers(CAPTURED.ce_type), per_kind):
        records.append(("bad_headers", headers, good_value, reason))
    for value in _collect("e2e:draw:random_bytes", st.binary(min_size=1, max_size=300), per_kind):
        records.append(("random_bytes", good_headers(CAPTURED.ce_type), value, ""))
    for value in _collect("e2e:draw:bad_json", st.binary(max_size=100) | st.text(max_size=60).map(str.encode), per_kind):
        records.append(("bad_json", {**good_headers(CAPTURED.ce_type), "content-type": JSON}, value, ""))
    generated = messages(FrameCaptured.DESCRIPTOR, overrides=OVERRIDES)
    for msg in _collect("e2e:draw:generated", generated, count - 3 * per_kind):
        records.append(("generated", good_headers(CAPTURED.ce_type), msg.SerializeToString(), ""))
    return records


def _tagged(headers: dict[str, str]) -> tuple[dict[str, str], str]:
    """The headers with a fresh ce_id where they carry one (rejections name it), and that id."""
    if not headers.get("ce_id"):
        return headers, ""
    ce_id = str(uuid.uuid4())
    return {**headers, "ce_id": ce_id}, ce_id


async def test_bad_records_go_to_the_dlq_or_are_rejected_and_good_frames_are_ingested(stack, tmp_path):
    line = f"line-{uuid.uuid4().hex[:6]}"
    bad = bad_records(max(CASES, 40), line)
    good = [frame(jpeg(seed=100 + i), line=line) for i in range(max(len(bad) // GOOD_EVERY, 3))]
    # Every record has a unique key (the DLQ keeps it), a ce_id where it has one (a rejection
    # names it) and, for generated events, a unique frame_id (an ingest names it).
    sends: list[tuple[bytes, dict[str, str], bytes]] = []
    cases: dict[bytes, Case] = {}
    for i, (kind, headers, value, reason) in enumerate(bad):
        key = f"fuzz-{uuid.uuid4().hex}".encode()
        headers, ce_id = _tagged(headers)
        frame_id = ""
        if kind == "generated":
            msg = FrameCaptured.FromString(value)
            msg.frame_id = frame_id = f"fz-{uuid.uuid4().hex[:16]}"
            value = msg.SerializeToString()
        sends.append((key, headers, value))
        cases[key] = Case(kind, reason, ce_id, frame_id)
        if i % GOOD_EVERY == 0 and good:
            msg = good.pop()
            key = f"good-{uuid.uuid4().hex}".encode()
            headers, ce_id = _tagged(good_headers(CAPTURED.ce_type))
            sends.append((key, headers, msg.SerializeToString()))
            cases[key] = Case("good", "", ce_id, msg.frame_id)
    assert not good

    settings = ingest_settings(stack, tmp_path / "ingest.db")
    await skip_group_to_end(stack, settings.consumer_group)
    async with running_ingest(settings), Outcomes(stack) as outcomes:
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, linger_ms=5)
        await producer.start()
        try:
            sent = [await producer.send(CAPTURED.topic, value, key=key, headers=[(k, v.encode()) for k, v in headers.items()])
                    for key, headers, value in sends]
            await asyncio.gather(*sent)
        finally:
            await producer.stop()
        await outcomes.until(lambda: all(outcomes.of(key, case) for key, case in cases.items()), WAIT_S)

    for key, case in cases.items():
        found = outcomes.of(key, case)
        assert len(found) == 1, (case, found)  # exactly one outcome per record
        (outcome,) = found
        if case.kind == "good":
            assert outcome == "ingested", (case, outcome)
        elif case.dlq_reason:
            assert outcome == f"dlq:{case.dlq_reason}", (case, outcome)
        else:
            assert outcome.startswith(("dlq:", "rejected:")) or (case.kind == "generated" and outcome == "ingested"), outcome
        record(f"e2e:broker:{case.kind}", outcome)


@dataclass(frozen=True)
class Case:
    kind: str
    dlq_reason: str  # the reason it must be dead-lettered with; "": any outcome with a reason
    ce_id: str
    frame_id: str


class Outcomes:
    """Reads frames.ingested.v1, frames.rejected.v1 and frames.captured.v1.dlq from the beginning."""

    def __init__(self, stack) -> None:
        self.stack = stack
        self.ingested: dict[str, list[FrameIngested]] = {}
        self.rejected_by_event: dict[str, list[FrameRejected]] = {}
        self.dead: dict[bytes, list[dict[str, str]]] = {}

    async def __aenter__(self) -> Outcomes:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.stack.kafka_bootstrap, enable_auto_commit=False)
        await self.consumer.start()
        topics = [event_type(FrameIngested).topic, event_type(FrameRejected).topic, CAPTURED.dlq_topic]
        from lineloop.ingest.testing import ensure_topics
        await ensure_topics(self.stack, topics)
        await self.consumer.topics()
        partitions = [TopicPartition(t, p) for t in topics for p in self.consumer.partitions_for_topic(t) or ()]
        self.consumer.assign(partitions)
        await self.consumer.seek_to_beginning(*partitions)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.consumer.stop()

    def of(self, key: bytes, case: Case) -> list[str]:
        """Every outcome seen for the record: "dlq:<reason>", "rejected:<REASON>", "ingested"."""
        found = []
        for headers in self.dead.get(key, []):
            assert headers.get("dlq_reason") and headers.get("dlq_detail"), headers
            found.append(f"dlq:{headers['dlq_reason']}")
        for msg in self.rejected_by_event.get(case.ce_id, []) if case.ce_id else []:
            assert msg.reason and msg.detail, msg
            found.append(f"rejected:{RejectReason.Name(msg.reason)}")
        if case.frame_id:
            found += ["ingested"] * len(self.ingested.get(case.frame_id, []))
        return found

    async def until(self, done, timeout: float, settle_s: float = 3.0) -> None:
        """Read until `done()`, then `settle_s` more: a second outcome of one record would show there."""
        deadline = asyncio.get_running_loop().time() + timeout
        settled_at = None
        while settled_at is None or asyncio.get_running_loop().time() < settled_at:
            left = deadline - asyncio.get_running_loop().time()
            assert left > 0, "not every record reached the DLQ, frames.rejected.v1 or frames.ingested.v1"
            if settled_at is None and done():
                settled_at = asyncio.get_running_loop().time() + settle_s
            batches = await self.consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                for r in records:
                    headers = {k: (v or b"").decode("utf-8", "replace") for k, v in r.headers or ()}
                    if tp.topic == CAPTURED.dlq_topic:
                        self.dead.setdefault(r.key, []).append(headers)
                    elif tp.topic == event_type(FrameIngested).topic:
                        msg = FrameIngested.FromString(r.value)
                        self.ingested.setdefault(msg.frame_id, []).append(msg)
                    else:
                        msg = FrameRejected.FromString(r.value)
                        self.rejected_by_event.setdefault(msg.source_event_id, []).append(msg)
