"""The monitor's own state: per-frame statistics, labels, rejections, drift reports, line state."""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

SCHEMA_VERSION = 1
metadata = MetaData()

FEATURES = (
    "brightness_mean", "brightness_std", "contrast", "sharpness",
    "mean_r", "mean_g", "mean_b", "saturation_share", "confidence",
)

frames = Table(
    "monitor_frames", metadata,
    Column("frame_id", String(128), primary_key=True),
    Column("line_id", String(128), nullable=False, index=True),
    Column("camera_id", String(128), nullable=False),
    Column("ingested_at", DateTime(timezone=True), nullable=False, index=True),
    Column("seq", Integer, nullable=False),  # per-line arrival number, for windows
    *(Column(f, Float, nullable=False) for f in FEATURES),
    Column("predicted_class", String(64), nullable=False),  # "" when no prediction
    Column("model_name", String(128), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("canary", Boolean, nullable=False),
)

# Human labels, kept apart from frames: a label may arrive before its frame.
labels = Table(
    "monitor_labels", metadata,
    Column("frame_id", String(128), primary_key=True),
    Column("label_class", String(64), nullable=False),
)

rejections = Table(
    "monitor_rejections", metadata,
    Column("line_id", String(128), primary_key=True),
    Column("reason", String(64), primary_key=True),
    Column("count", Integer, nullable=False),
)

lines = Table(
    "monitor_lines", metadata,
    Column("line_id", String(128), primary_key=True),
    Column("frames_seen", Integer, nullable=False),
    Column("reference_from_seq", Integer, nullable=False),  # reference window starts here
    Column("model_name", String(128), nullable=False),
    Column("drift_until", DateTime(timezone=True), nullable=True),
    Column("last_drift_id", String(64), nullable=True),
)

drift_reports = Table(
    "monitor_drift", metadata,
    Column("drift_id", String(64), primary_key=True),
    Column("line_id", String(128), nullable=False, index=True),
    Column("detected_at", DateTime(timezone=True), nullable=False, index=True),
    Column("kind", Integer, nullable=False),
    Column("feature", String(64), nullable=False),
    Column("score", Float, nullable=False),
    Column("threshold", Float, nullable=False),
    Column("event", Text, nullable=False),  # the DriftDetected event, protobuf JSON
)
