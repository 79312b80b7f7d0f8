"""The event catalogue, read from the options in proto/lineloop/v1/events.proto.

Topic names, record keys and JSON acceptance are declared once, on the
messages themselves; this module only indexes them.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from lineloop.v1 import events_pb2, options_pb2

# How long a record stays on its topic (`retention.ms`, Kafka's default made explicit). While it is
# there a consumer may read it again (a group whose offsets were lost or reset), so each consumer's
# inbox remembers an applied event at least this long (`INBOX_RETENTION_S`) and only then forgets it.
TOPIC_RETENTION_MS = 7 * 24 * 3600 * 1000
INBOX_RETENTION_S = TOPIC_RETENTION_MS / 1000 + 24 * 3600

# The largest image a frame may carry inline (FrameCaptured.inline_image, raw bytes): the README
# states it, ingest refuses a larger one, and the record limit below is derived from it.
MAX_INLINE_IMAGE_BYTES = 1024 * 1024
# The largest record on an event topic: each is created with it as `max.message.bytes` and
# gateways' producers use it as their `max.request.size`, so a frame with an inline image at the limit fits even
# as JSON, where base64 makes the image 4/3 as large; the rest is room for the other fields,
# the CloudEvents headers and the record batch around it. Kafka's default is 1 MB.
RECORD_HEADROOM_BYTES = 256 * 1024
MAX_RECORD_BYTES = 4 * -(-MAX_INLINE_IMAGE_BYTES // 3) + RECORD_HEADROOM_BYTES
# A dead-lettered record is the original plus the bus's dlq_* headers (dlq_detail is cut to 2,000
# characters): `.dlq` topics, and the bus's producer, take that much more, so any record that
# reached a topic can be dead-lettered.
DLQ_HEADERS_BYTES = 16 * 1024
MAX_DLQ_RECORD_BYTES = MAX_RECORD_BYTES + DLQ_HEADERS_BYTES


@dataclass(frozen=True)
class EventType:
    message: type[Message]
    topic: str
    key_field: str
    accepts_json: bool

    @property
    def ce_type(self) -> str:
        """CloudEvents `type`: the message's full protobuf name."""
        return self.message.DESCRIPTOR.full_name

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic}.dlq"

    def key_of(self, msg: Message) -> bytes | None:
        value = getattr(msg, self.key_field, "") if self.key_field else ""
        return str(value).encode() if value else None


def _catalogue() -> dict[type[Message], EventType]:
    found: dict[type[Message], EventType] = {}
    for name, descriptor in events_pb2.DESCRIPTOR.message_types_by_name.items():
        opts = descriptor.GetOptions()
        topic = opts.Extensions[options_pb2.topic]
        if not topic:
            continue
        cls = getattr(events_pb2, name)
        found[cls] = EventType(
            message=cls,
            topic=topic,
            key_field=opts.Extensions[options_pb2.key_field],
            accepts_json=opts.Extensions[options_pb2.accepts_json],
        )
    return found


EVENTS: dict[type[Message], EventType] = _catalogue()
BY_TOPIC: dict[str, EventType] = {e.topic: e for e in EVENTS.values()}


def event_type(message: type[Message] | Message) -> EventType:
    cls = message if isinstance(message, type) else type(message)
    try:
        return EVENTS[cls]
    except KeyError:
        raise TypeError(f"{cls.__name__} is not an event: it has no (lineloop.v1.topic) option") from None


def all_topics() -> list[str]:
    return sorted(BY_TOPIC)
