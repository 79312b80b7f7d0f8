"""CloudEvents 1.0 Kafka binary mode: headers and protobuf/JSON values.

https://github.com/cloudevents/spec/blob/v1.0.2/cloudevents/bindings/kafka-protocol-binding.md
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry import propagate

from lineloop.bus.errors import Reject
from lineloop.contracts.topics import EventType

SPECVERSION = "1.0"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
REQUIRED_HEADERS = ("ce_specversion", "ce_id", "ce_source", "ce_type", "content-type")


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
    time = None
    if headers.get("ce_time"):
        try:
            time = datetime.fromisoformat(headers["ce_time"].replace("Z", "+00:00"))
        except ValueError as exc:
            raise Reject("invalid_header", f"ce_time {headers['ce_time']!r} is not RFC 3339") from exc
    env = Envelope(
        id=headers["ce_id"], source=headers["ce_source"], type=headers["ce_type"],
        time=time, content_type=content_type, headers=headers,
    )
    return msg, env
