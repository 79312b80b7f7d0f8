"""Hypothesis strategies built from protobuf descriptors, and hostile CloudEvents headers.

`messages(descriptor)` draws any message of that type: scalars over their whole range (and
the values that break naive code: 0, -1, NaN, huge), enums with unknown numbers too,
nested messages, repeated fields, maps, at most one member of each oneof. Strings mix a
small vocabulary of plausible names (so cases reach past the first lookup) with empty,
long, unicode and path-like strings; proto3 strings must be UTF-8, so no invalid
sequences here: random bytes go through `cloudevents.decode` instead.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

from lineloop.bus.cloudevents import JSON, PROTOBUF, REQUIRED_HEADERS, SPECVERSION

F = FieldDescriptor
SHA = hashlib.sha256(b"lineloop").hexdigest()
VOCABULARY = (
    "apples", "line-1", "cam-1", "gw-1", "v0001", "v0002", "1", "2", "ok", "bruise", "rot", "scab",
    "lineloop-frames", "lineloop-datasets", "lineloop-models", "triton-onnx", "onnx-cpu", "canary",
    "production", "image/jpeg", "image/png", SHA, "manifest.jsonl", "apples/v0001/manifest.jsonl",
)
HOSTILE = (
    "", " ", "\x00", "\t\n", "../../etc/passwd", "/abs/key", "a/../b", "%00", "*", "?", "' OR 1=1 --",
    "\u202e", "\ufeff", "é" * 3, "🍎", "\U0010ffff", "NaN", "-1", "9" * 40, "a" * 300,
)
INT_EDGES = {
    32: (0, 1, -1, 2**31 - 1, -(2**31)),
    64: (0, 1, -1, 2**63 - 1, -(2**63)),
}


def strings() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(VOCABULARY),
        st.sampled_from(HOSTILE),
        st.text(max_size=24),
        st.integers(1_000, 70_000).map(lambda n: "x" * n),  # long: column limits, log lines, keys
    )


def _ints(bits: int, signed: bool) -> st.SearchStrategy[int]:
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    edges = [v for v in INT_EDGES[bits] if lo <= v <= hi] + [hi, lo]
    return st.one_of(st.sampled_from(edges), st.integers(-3, 1000).filter(lambda v: lo <= v <= hi), st.integers(lo, hi))


def rarely(common: st.SearchStrategy, rare: st.SearchStrategy, one_in: int = 20) -> st.SearchStrategy:
    """`rare` about once in `one_in` draws: values every decode refuses (NaN, unknown enums, timestamps out
    of range) would otherwise stop most multi-field messages before the handler."""
    return st.integers(1, one_in).flatmap(lambda n: rare if n == 1 else common)


def _floats(width: int) -> st.SearchStrategy[float]:
    finite = st.one_of(
        st.sampled_from([0.0, 0.5, 1.0, -1.0, 1e30, math.inf, -math.inf]),
        st.floats(0.0, 1.0, width=width),
        st.floats(width=width, allow_nan=False),
    )
    return rarely(finite, st.just(math.nan))


def _scalar(field: FieldDescriptor) -> st.SearchStrategy:
    t = field.type
    if t in (F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32):
        return _ints(32, True)
    if t in (F.TYPE_UINT32, F.TYPE_FIXED32):
        return _ints(32, False)
    if t in (F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64):
        return _ints(64, True)
    if t in (F.TYPE_UINT64, F.TYPE_FIXED64):
        return _ints(64, False)
    if t == F.TYPE_FLOAT:
        return _floats(32)
    if t == F.TYPE_DOUBLE:
        return _floats(64)
    if t == F.TYPE_BOOL:
        return st.booleans()
    if t == F.TYPE_STRING:
        return strings()
    if t == F.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), st.sampled_from([b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"]))
    if t == F.TYPE_ENUM:
        numbers = [v.number for v in field.enum_type.values]
        # proto3 enums are open: any int32 parses (decode refuses the ones this build does not know).
        return rarely(st.sampled_from(numbers), st.integers(-(2**31), 2**31 - 1))
    raise TypeError(f"no strategy for field {field.full_name} of type {t}")


def _timestamps() -> st.SearchStrategy[dict]:
    """google.protobuf.Timestamp: plausible (1970..2100), rarely any int64/int32 (outside what datetime holds)."""
    plausible = st.fixed_dictionaries({"seconds": st.integers(0, 4_102_444_800), "nanos": st.integers(0, 999_999_999)})
    return rarely(plausible, st.fixed_dictionaries({"seconds": _ints(64, True), "nanos": _ints(32, True)}), 10)


Overrides = Mapping[str, Callable[[], st.SearchStrategy]]


def messages(descriptor: Descriptor, *, overrides: Overrides | None = None, max_depth: int = 3) -> st.SearchStrategy[Message]:
    """Any message of `descriptor`'s type. `overrides`: field full name -> strategy of its value."""
    cls = GetMessageClass(descriptor)
    return _fields(descriptor, dict(overrides or {}), max_depth).map(lambda values: _build(cls, values))


def _fields(descriptor: Descriptor, overrides: dict, depth: int) -> st.SearchStrategy[dict]:
    if descriptor.full_name == "google.protobuf.Timestamp":
        return _timestamps()
    optional: dict[str, st.SearchStrategy] = {}
    oneofs: dict[str, list[FieldDescriptor]] = {}
    for field in descriptor.fields:
        if field.containing_oneof is not None and not _synthetic(field):
            oneofs.setdefault(field.containing_oneof.name, []).append(field)
            continue
        value = _value(field, overrides, depth)
        if value is not None:
            optional[field.name] = value
    base = st.fixed_dictionaries({}, optional=optional)
    for members in oneofs.values():
        choices = [st.just({})] + [
            v.map(lambda x, n=m.name: {n: x}) for m in members if (v := _value(m, overrides, depth)) is not None
        ]
        base = st.tuples(base, st.one_of(choices)).map(lambda pair: {**pair[0], **pair[1]})
    return base


def _synthetic(field: FieldDescriptor) -> bool:
    """A proto3 `optional` field sits in a one-member oneof named _<field>."""
    oneof = field.containing_oneof
    return len(oneof.fields) == 1 and oneof.name == f"_{field.name}"


def _single(field: FieldDescriptor, overrides: dict, depth: int) -> st.SearchStrategy | None:
    if field.full_name in overrides:
        return overrides[field.full_name]()
    if field.type == F.TYPE_MESSAGE:
        if depth <= 0:
            return None
        return _fields(field.message_type, overrides, depth - 1)
    return _scalar(field)


def _value(field: FieldDescriptor, overrides: dict, depth: int) -> st.SearchStrategy | None:
    if field.full_name in overrides:
        return overrides[field.full_name]()
    if field.type == F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
        entry = field.message_type
        key = _single(entry.fields_by_name["key"], overrides, depth)
        value = _single(entry.fields_by_name["value"], overrides, depth)
        if key is None or value is None:
            return None
        return st.dictionaries(key, value, max_size=4)
    one = _single(field, overrides, depth)
    if one is None:
        return None
    if field.is_repeated:
        return st.lists(one, max_size=4)
    return one


def _build(cls: type[Message], values: dict) -> Message:
    msg = cls()
    _fill(msg, values)
    return msg


def _fill(msg: Message, values: dict) -> None:
    fields = msg.DESCRIPTOR.fields_by_name
    for name, value in values.items():
        field = fields[name]
        if field.type == F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            target = getattr(msg, name)
            value_field = field.message_type.fields_by_name["value"]
            for k, v in value.items():
                if value_field.type == F.TYPE_MESSAGE:
                    _fill(target[k], v)
                else:
                    target[k] = v
        elif field.is_repeated:
            target = getattr(msg, name)
            for v in value:
                if field.type == F.TYPE_MESSAGE:
                    _fill(target.add(), v)
                else:
                    target.append(v)
        elif field.type == F.TYPE_MESSAGE:
            sub = getattr(msg, name)
            sub.SetInParent()
            _fill(sub, value)
        else:
            setattr(msg, name, value)


# ---- CloudEvents headers ------------------------------------------------------

def good_headers(ce_type: str) -> dict[str, str]:
    return {
        "ce_specversion": SPECVERSION, "ce_id": "fuzz-0", "ce_source": "test/fuzz",
        "ce_type": ce_type, "ce_time": "2026-01-01T00:00:00.000Z", "content-type": PROTOBUF,
    }


@st.composite
def bad_headers(draw, ce_type: str) -> tuple[dict[str, str], str]:
    """Headers with one thing wrong, and the Reject reason `decode` must give for it."""
    headers = good_headers(ce_type)
    kind = draw(st.sampled_from(["missing", "empty", "specversion", "type", "content_type", "time"]))
    if kind in ("missing", "empty"):
        name = draw(st.sampled_from(REQUIRED_HEADERS))
        if kind == "missing":
            del headers[name]
        else:
            headers[name] = ""
        return headers, "missing_header"
    if kind == "specversion":
        headers["ce_specversion"] = draw(st.sampled_from(["0.3", "1", "1.0 ", "2.0", "\x00"]) | st.text(min_size=1, max_size=8)
                                         .filter(lambda v: v != SPECVERSION))
        return headers, "unsupported_specversion"
    if kind == "type":
        headers["ce_type"] = draw(st.sampled_from(["lineloop.v1.Nope", ce_type.lower(), ce_type + " ", "x"])
                                  | st.text(min_size=1, max_size=30).filter(lambda v: v != ce_type))
        return headers, "wrong_type"
    if kind == "content_type":
        value = draw(st.sampled_from(["text/plain", "application/octet-stream", "image/jpeg", "application/protobuf",
                                      "application/cloudevents+json", ";", " "])
                     | st.text(min_size=1, max_size=30))
        headers["content-type"] = value
        base = value.split(";")[0].strip().lower()
        if base in (PROTOBUF, JSON) or not value.strip():
            headers["content-type"] = "text/plain"  # a right one drawn by chance: make it wrong
        return headers, "unsupported_content_type"
    headers["ce_time"] = draw(st.sampled_from(["yesterday", "2026-13-01T00:00:00Z", "2026-01-01T25:00:00Z", "0", "Z"])
                              | st.text(min_size=1, max_size=30).filter(lambda v: not _iso(v)))
    return headers, "invalid_header"


def _iso(value: str) -> bool:
    from datetime import datetime
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
        return True
    except ValueError:
        return False
