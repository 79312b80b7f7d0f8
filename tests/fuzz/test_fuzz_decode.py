"""Every consumed event type at the decode layer: `cloudevents.decode` on generated messages,
random bytes, hostile JSON and wrong or missing CloudEvents headers.

Outcome per case: the message decodes (and equals what was sent), or `Reject` with a
specific reason; any other exception is a finding.
"""

from __future__ import annotations

import json

import pytest
from google.protobuf import json_format
from hypothesis import strategies as st

from lineloop.bus import Reject
from lineloop.bus.cloudevents import JSON, PROTOBUF, decode
from lineloop.contracts.topics import BY_TOPIC, EventType, event_type
from tests.fuzz.harness import run_cases
from tests.fuzz.strategies import bad_headers, good_headers, messages

TOPICS = sorted(BY_TOPIC)
DECODE_REASONS = {"undecodable", "unsupported_content_type", "invalid_field"}


def _decode(et: EventType, value: bytes, headers: dict[str, str]) -> str:
    try:
        decode(et, value, headers)
    except Reject as rej:
        assert rej.reason and rej.detail, rej
        return f"rejected:{rej.reason}"
    return "decoded"


@pytest.mark.parametrize("topic", TOPICS)
def test_generated_messages_decode_to_what_was_sent(topic):
    et = BY_TOPIC[topic]

    def check(msg) -> str:
        headers = good_headers(et.ce_type)
        try:
            decoded, envelope = decode(et, msg.SerializeToString(), headers)
        except Reject as rej:
            # A Timestamp out of range or an unknown enum number: parsed by protobuf, refused by decode.
            assert rej.reason == "invalid_field" and rej.detail, rej
            return "rejected:invalid_field"
        assert decoded == msg and envelope.type == et.ce_type
        if not et.accepts_json:
            return "decoded"
        try:
            value = json_format.MessageToJson(msg).encode()
        except (ValueError, json_format.SerializeToJsonError):
            return "decoded:protobuf_only"  # e.g. a Timestamp JSON cannot carry; protobuf round-trip checked
        decoded, _ = decode(et, value, {**headers, "content-type": JSON})
        assert decoded == msg or decoded.SerializeToString(deterministic=True) == msg.SerializeToString(deterministic=True) \
            or _nan_equal(decoded, msg)
        return "decoded:json"

    run_cases(f"decode:{topic}:generated", messages(et.message.DESCRIPTOR), check)


def _nan_equal(a, b) -> bool:
    """NaN != NaN: compare the JSON texts instead."""
    return json_format.MessageToJson(a) == json_format.MessageToJson(b)


def _raw_values(et: EventType) -> st.SearchStrategy[tuple[bytes, str]]:
    """Random bytes, truncated/extended valid payloads, hostile JSON documents; with a content type."""
    valid = messages(et.message.DESCRIPTOR).map(lambda m: m.SerializeToString())
    json_docs = st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
        max_leaves=12,
    ).map(lambda doc: json.dumps(doc).encode())
    field_names = [f.json_name for f in et.message.DESCRIPTOR.fields] + [f.name for f in et.message.DESCRIPTOR.fields]
    wrong_types = st.dictionaries(
        st.sampled_from(field_names),
        st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=2),
                  st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.floats()),
        min_size=1, max_size=4,
    ).map(lambda doc: json.dumps(doc).encode())
    deep = st.sampled_from([b"[" * 100_000, b'{"a":' * 50_000, b"\x0a\xff\xff\xff\xff\x0f" * 3, b"\x0a" + b"\x80" * 20])
    nested = st.integers(1, 200_000).map(lambda n: b"\x4a\x02\x0a\x00" * 1 + b"\x5a" + bytes([0x80 | 0x7f]) * 3)
    value = st.one_of(
        st.binary(max_size=256),
        valid.flatmap(lambda v: st.integers(0, max(len(v) - 1, 0)).map(lambda n: v[:n])),  # truncated
        valid.flatmap(lambda v: st.binary(min_size=1, max_size=16).map(lambda tail: v + tail)),  # trailing junk
        json_docs, wrong_types, deep, nested,
    )
    content_type = st.sampled_from([PROTOBUF, JSON, f"{JSON}; charset=utf-8", f"{PROTOBUF};proto=x"])
    return st.tuples(value, content_type)


@pytest.mark.parametrize("topic", TOPICS)
def test_random_values_decode_or_are_refused_with_a_reason(topic):
    et = BY_TOPIC[topic]

    def check(case) -> str:
        value, content_type = case
        outcome = _decode(et, value, {**good_headers(et.ce_type), "content-type": content_type})
        if outcome.startswith("rejected:"):
            assert outcome.removeprefix("rejected:") in DECODE_REASONS, outcome
        return outcome

    run_cases(f"decode:{topic}:random_bytes", _raw_values(et), check)


@pytest.mark.parametrize("topic", TOPICS)
def test_wrong_or_missing_headers_are_refused_with_their_reason(topic):
    et = BY_TOPIC[topic]
    payloads = messages(et.message.DESCRIPTOR).map(lambda m: m.SerializeToString())

    def check(case) -> str:
        (headers, expected), value = case
        outcome = _decode(et, value, headers)
        assert outcome == f"rejected:{expected}", (headers, outcome)
        return outcome

    run_cases(f"decode:{topic}:bad_headers", st.tuples(bad_headers(et.ce_type), payloads), check)


def test_values_no_handler_can_use_are_refused_at_decode():
    """Found by this fuzz: handlers raised ValueError on these (ToDatetime, RejectReason.Name)."""
    from lineloop.v1.events_pb2 import DriftDetected, FrameIngested, FrameRejected

    out_of_range = FrameIngested(frame_id="f-1")
    out_of_range.captured_at.seconds = -(2**63)
    bad_nanos = DriftDetected()
    bad_nanos.detected_at.nanos = -28360
    unknown_enum = FrameRejected(frame_id="f-1", reason=-1)
    for msg in (out_of_range, bad_nanos, unknown_enum):
        et = event_type(msg)
        with pytest.raises(Reject) as refused:
            decode(et, msg.SerializeToString(), good_headers(et.ce_type))
        assert refused.value.reason == "invalid_field", refused.value
