"""CloudEvents 1.0 Kafka binary mode: headers and protobuf/JSON values.

https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/bindings/kafka-protocol-binding.md
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message
from opentelemetry import propagate

from lineloop.bus.errors import Reject
from lineloop.contracts.topics import EventType

SPECVERSION = "1.0"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
REQUIRED_HEADERS = ("ce_specversion", "ce_id", "ce_source", "ce_type", "content-type")
# What google.protobuf.Timestamp allows (0001-01-01 .. 9999-12-31): the binary format carries any int64,
# and ToDatetime() in a handler raised ValueError on the rest (found by tests/fuzz).
_TIMESTAMP_SECONDS = (-62_135_596_800, 253_402_300_799)
_FLOATS = (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE)


@dataclass(frozen=True)
class Envelope:
    """The CloudEvents attributes of one record."""

    id: str
    source: str
    type: str
    time: datetime | None
    content_type: str
    headers: dict[str, str]


def new_event_id() -> str:
    return str(uuid.uuid4())


def make_headers(et: EventType, *, source: str, event_id: str | None = None) -> dict[str, str]:
    """Headers for a new event, with the current trace context injected."""
    headers = {
        "ce_specversion": SPECVERSION,
        "ce_id": event_id or new_event_id(),
        "ce_source": source,
        "ce_type": et.ce_type,
        "ce_time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "content-type": PROTOBUF,
    }
    propagate.inject(headers)
    return headers


def header_dict(raw: tuple[tuple[str, bytes], ...] | list | None) -> dict[str, str]:
    return {k: (v or b"").decode("utf-8", "replace") for k, v in (raw or ())}


def decode(et: EventType, value: bytes | None, headers: dict[str, str]) -> tuple[Message, Envelope]:
    """Check the envelope and decode the value; `Reject` says why not."""
    for name in REQUIRED_HEADERS:
        if not headers.get(name):
            raise Reject("missing_header", f"header {name!r} is missing")
    if headers["ce_specversion"] != SPECVERSION:
        raise Reject("unsupported_specversion", f"ce_specversion {headers['ce_specversion']!r}, expected {SPECVERSION}")
    if headers["ce_type"] != et.ce_type:
        raise Reject("wrong_type", f"ce_type {headers['ce_type']!r} on {et.topic}, expected {et.ce_type!r}")
    time = None
    if headers.get("ce_time"):
        try:
            time = datetime.fromisoformat(headers["ce_time"].replace("Z", "+00:00"))
        except ValueError as exc:
            raise Reject("invalid_header", f"ce_time {headers['ce_time']!r} is not RFC 3339") from exc
    content_type = headers["content-type"].split(";")[0].strip().lower()
    msg = et.message()
    try:
        if content_type == PROTOBUF:
            msg.ParseFromString(value or b"")
        elif content_type == JSON and et.accepts_json:
            json_format.Parse((value or b"").decode("utf-8"), msg)
        else:
            accepted = f"{PROTOBUF} or {JSON}" if et.accepts_json else PROTOBUF
            raise Reject("unsupported_content_type", f"content-type {content_type!r}, {et.topic} takes {accepted}")
    except (DecodeError, json_format.ParseError, UnicodeDecodeError) as exc:
        raise Reject("undecodable", f"{content_type} value does not decode as {et.ce_type}: {exc}") from exc
    problem = _invalid_field(msg)
    if problem:
        raise Reject("invalid_field", f"{et.ce_type}: {problem}")
    env = Envelope(
        id=headers["ce_id"], source=headers["ce_source"], type=headers["ce_type"],
        time=time, content_type=content_type, headers=headers,
    )
    return msg, env


def _invalid_field(msg: Message, path: str = "") -> str | None:
    """What no handler can use, whatever the event means: a Timestamp outside its range, a NaN
    (no score, share or statistic is ever NaN; SQLite stores it as NULL), or an enum number this
    build does not know (proto3 parses all three; `ToDatetime()`, NOT NULL and `.Name()` raise).

    An unknown enum value from a newer producer is refused too: the record waits in the DLQ
    until this consumer knows it, instead of being applied as something it is not.
    """
    if msg.DESCRIPTOR.full_name == "google.protobuf.Timestamp":
        seconds, nanos = msg.seconds, msg.nanos
        if not (_TIMESTAMP_SECONDS[0] <= seconds <= _TIMESTAMP_SECONDS[1]) or not 0 <= nanos <= 999_999_999:
            return f"{path or 'timestamp'} ({seconds} s, {nanos} ns) is outside 0001-01-01..9999-12-31"
        return None
    for field, value in msg.ListFields():
        name = f"{path}.{field.name}" if path else field.name
        if field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            field = field.message_type.fields_by_name["value"]
            items = [(f"{name}[{k!r}]", v) for k, v in value.items()]
        else:
            items = [(name, v) for v in (value if field.is_repeated else [value])]
        for where, v in items:
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                found = _invalid_field(v, where)
            elif field.type == FieldDescriptor.TYPE_ENUM and v not in field.enum_type.values_by_number:
                found = f"{where} = {v} is not a {field.enum_type.full_name} this build knows"
            elif field.type in _FLOATS and math.isnan(v):
                found = f"{where} is NaN"
            else:
                found = None
            if found:
                return found
    return None
