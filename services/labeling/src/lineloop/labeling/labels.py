"""Recording labels: human submissions, model auto-accepts, imports; each with its labels.created.v1.

Everything here runs inside the caller's transaction and raises `LabelRejected`
before writing anything, so a refused label leaves no trace but a metric.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import metrics
from sqlalchemy.orm import Session

from lineloop.contracts.labels import GROUND_TRUTH_SOURCES
from lineloop.labeling import state
from lineloop.labeling.queue import as_utc
from lineloop.v1.common_pb2 import Prediction
from lineloop.v1.events_pb2 import LabelCreated, LabelSource

Emit = Callable[[Message], object]
# The API counts after commit; the frames handler counts model labels as it stores them.
created = metrics.get_meter("lineloop.labeling").create_counter(
    "lineloop.labeling.labels", unit="{label}", description="Labels accepted. Attributes: source (human, import, model).",
)


class LabelRejected(Exception):
    """Bad input: a gRPC status code, an UPPER_SNAKE reason and a message for people."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = metadata


def check_class(label_class: str, classes: list[str], where: str = "") -> None:
    if label_class not in classes:
        raise LabelRejected(
            grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_CLASS",
            f"{where}unknown class {label_class!r}; expected one of {', '.join(classes)}", label_class=label_class,
        )


def known_frame(s: Session, frame_id: str, where: str = ""):
    row = state.frame(s, frame_id) if frame_id else None
    if row is None:
        raise LabelRejected(
            grpc.StatusCode.NOT_FOUND, "UNKNOWN_FRAME",
            f"{where}unknown frame {frame_id!r}: labeling has not seen it on frames.ingested.v1", frame_id=frame_id,
        )
    return row


def make_label(
    frame, label_class: str, source: int, annotator: str, note: str, now: datetime, prediction: Prediction | None = None
) -> LabelCreated:
    created = Timestamp()
    created.FromDatetime(now)
    label = LabelCreated(
        label_id=uuid.uuid4().hex, frame_id=frame.frame_id, line_id=frame.line_id, camera_id=frame.camera_id,
        sha256=frame.sha256, label_class=label_class, source=source, annotator=annotator, note=note,
        created_at=created,
    )
    if prediction is not None:
        label.prediction.CopyFrom(prediction)
    elif frame.prediction:
        label.prediction.MergeFromString(frame.prediction)
    return label


def record(s: Session, label: LabelCreated, dedupe_key: str | None, emit: Emit) -> None:
    """Store one accepted label, take a human-labelled frame out of the queue, emit labels.created.v1."""
    state.add_label(s, label, dedupe_key)
    if label.source in GROUND_TRUTH_SOURCES:
        state.settle_suspects(s, label)
        # A flagged label's own author answering again is not a second review: it stays queued.
        if not state.pending_reviews(s, [label.frame_id]):
            state.take_out_of_queue(s, label.frame_id)
    emit(label)


def submit(
    s: Session, *, frame_id: str, label_class: str, annotator: str, note: str, lease_id: str,
    classes: list[str], now: datetime, emit: Emit,
) -> tuple[LabelCreated, bool]:
    """SubmitLabel: (the label, whether this exact submission was already recorded)."""
    if not annotator:
        raise LabelRejected(grpc.StatusCode.INVALID_ARGUMENT, "MISSING_ANNOTATOR", "annotator is required")
    check_class(label_class, classes)
    frame = known_frame(s, frame_id)
    dedupe_key = None
    if lease_id:
        dedupe_key = f"lease:{lease_id}"
        earlier = state.label_by_dedupe_key(s, dedupe_key)
        if earlier is not None:
            if (earlier.frame_id, earlier.label_class, earlier.annotator, earlier.note) == (
                frame_id, label_class, annotator, note
            ):
                return earlier, True
            raise LabelRejected(
                grpc.StatusCode.ALREADY_EXISTS, "LEASE_ALREADY_USED",
                f"lease {lease_id} was already used for label {earlier.label_id} ({earlier.label_class!r} by "
                f"{earlier.annotator}); to correct it, submit again without a lease",
                lease_id=lease_id, label_id=earlier.label_id,
            )
        held = state.lease(s, lease_id)
        if held is None:
            raise LabelRejected(grpc.StatusCode.NOT_FOUND, "UNKNOWN_LEASE", f"unknown lease {lease_id!r}", lease_id=lease_id)
        if held.frame_id != frame_id:
            raise LabelRejected(
                grpc.StatusCode.INVALID_ARGUMENT, "LEASE_FRAME_MISMATCH",
                f"lease {lease_id} is for frame {held.frame_id!r}, not {frame_id!r}", lease_id=lease_id,
            )
        if held.annotator != annotator:
            raise LabelRejected(
                grpc.StatusCode.PERMISSION_DENIED, "LEASE_NOT_YOURS",
                f"lease {lease_id} belongs to annotator {held.annotator!r}, not {annotator!r}", lease_id=lease_id,
            )
        expired_at = as_utc(held.expires_at)
        if expired_at <= now:
            raise LabelRejected(
                grpc.StatusCode.FAILED_PRECONDITION, "LEASE_EXPIRED",
                f"lease {lease_id} on frame {frame_id!r} expired at {expired_at.isoformat()}; ask NextTasks for new tasks",
                lease_id=lease_id, expired_at=expired_at.isoformat(),
            )
    else:
        # Without a lease, a retry is recognised as the frame's latest label being this very one.
        history = state.label_history(s, frame_id)
        last = history[-1] if history else None
        if (
            last is not None and last.source == LabelSource.LABEL_SOURCE_HUMAN
            and (last.label_class, last.annotator, last.note) == (label_class, annotator, note)
        ):
            return last, True
    label = make_label(frame, label_class, LabelSource.LABEL_SOURCE_HUMAN, annotator, note, now)
    record(s, label, dedupe_key, emit)
    return label, False


def utcnow() -> datetime:
    return datetime.now(UTC)
