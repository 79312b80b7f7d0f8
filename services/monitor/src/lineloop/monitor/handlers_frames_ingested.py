"""frames.ingested.v1: record the frame's statistics and prediction; judge the line's drift now and then."""

from __future__ import annotations

import uuid
from datetime import timedelta

from google.protobuf import json_format
from opentelemetry import metrics as otel_metrics
from sqlalchemy import select, update

from lineloop.bus import EventContext
from lineloop.monitor.settings import MonitorSettings
from lineloop.monitor.state import drift_reports, frames, lines
from lineloop.monitor.windows import Judgement, judge
from lineloop.storage.sql import as_utc, utcnow
from lineloop.v1 import common_pb2, events_pb2

_meter = otel_metrics.get_meter(__name__)
drift_score = _meter.create_gauge("lineloop.monitor.drift_score", description="PSI of a quality statistic, current vs reference window. Attributes: line, feature.")
live_accuracy = _meter.create_gauge("lineloop.monitor.live_accuracy", description="Share of human-labelled frames the serving model got right. Attributes: line.")


def make_handler(settings: MonitorSettings):
    async def on_frame_ingested(msg: events_pb2.FrameIngested, ctx: EventContext) -> None:
        s = ctx.session
        line = s.execute(select(lines).where(lines.c.line_id == msg.line_id)).first()
        pred = msg.prediction if msg.prediction.status == common_pb2.PREDICTION_STATUS_OK else None
        if line is None:
            s.execute(lines.insert().values(
                line_id=msg.line_id, frames_seen=0, reference_from_seq=1,
                # Before any model serves the line, retraining targets the model
                # training names after the line's dataset (its default pattern).
                model_name=(pred.model_name if pred else "") or msg.line_id,
            ))
            line = s.execute(select(lines).where(lines.c.line_id == msg.line_id)).one()
        if s.execute(select(frames.c.frame_id).where(frames.c.frame_id == msg.frame_id)).first():
            return  # the same frame re-sent under a new event id
        seq = line.frames_seen + 1
        q = msg.quality
        s.execute(frames.insert().values(
            frame_id=msg.frame_id, line_id=msg.line_id, camera_id=msg.camera_id,
            ingested_at=msg.ingested_at.ToDatetime(tzinfo=utcnow().tzinfo) if msg.HasField("ingested_at") else utcnow(),
            seq=seq, brightness_mean=q.brightness_mean, brightness_std=q.brightness_std, contrast=q.contrast,
            sharpness=q.sharpness, mean_r=q.mean_r, mean_g=q.mean_g, mean_b=q.mean_b,
            saturation_share=q.saturation_share,
            confidence=max(pred.scores.values()) if pred and pred.scores else 0.0,
            predicted_class=pred.predicted_class if pred else "",
            model_name=pred.model_name if pred else "", model_version=pred.model_version if pred else "",
            canary=bool(pred and pred.canary),
        ))
        values = {"frames_seen": seq}
        if pred and pred.model_name:
            values["model_name"] = pred.model_name
        s.execute(update(lines).where(lines.c.line_id == msg.line_id).values(**values))
        if seq % settings.evaluate_every == 0:
            evaluate(ctx, msg.line_id, settings)

    return on_frame_ingested


def evaluate(ctx: EventContext, line_id: str, settings: MonitorSettings) -> events_pb2.DriftDetected | None:
    """Judge the line's windows; report drift (and ask for training) once per cooldown."""
    s = ctx.session
    verdict = judge(s, line_id, settings)
    if verdict is None:
        return None
    for feature, score in verdict.scores.items():
        drift_score.set(score, {"line": line_id, "feature": feature})
    if verdict.accuracy is not None:
        live_accuracy.set(verdict.accuracy, {"line": line_id})

    line = s.execute(select(lines).where(lines.c.line_id == line_id)).one()
    now = utcnow()
    if line.drift_until is not None and as_utc(line.drift_until) > now:
        return None
    kind, feature, score, threshold = _worst(verdict, settings)
    if kind is None:
        return None
    event = events_pb2.DriftDetected(
        drift_id=str(uuid.uuid4()), line_id=line_id, model_name=line.model_name, kind=kind, feature=feature,
        score=score, threshold=threshold,
        detail=", ".join(f"{k}={v:.3f}" for k, v in sorted(verdict.scores.items(), key=lambda kv: -kv[1]))
        + (f"; live_accuracy={verdict.accuracy:.3f} on {verdict.labelled} labels" if verdict.accuracy is not None else ""),
    )
    event.reference.start.FromDatetime(verdict.reference.start)
    event.reference.end.FromDatetime(verdict.reference.end)
    event.current.start.FromDatetime(verdict.current.start)
    event.current.end.FromDatetime(verdict.current.end)
    event.detected_at.FromDatetime(now)
    versions = s.execute(
        select(frames.c.model_version).where(frames.c.line_id == line_id, frames.c.model_version != "")
        .order_by(frames.c.seq.desc()).limit(1)
    ).first()
    if versions:
        event.model_version = versions.model_version
    ctx.emit(event)
    if settings.request_training:
        ctx.emit(events_pb2.TrainingRequested(
            model_name=line.model_name, dataset=line_id, reason=f"drift:{feature}",
            requested_by="lineloop/monitor",
        ))
    s.execute(update(lines).where(lines.c.line_id == line_id).values(
        drift_until=now + timedelta(seconds=settings.drift_cooldown_s), last_drift_id=event.drift_id,
    ))
    s.execute(drift_reports.insert().values(
        drift_id=event.drift_id, line_id=line_id, detected_at=now, kind=kind, feature=feature, score=score,
        threshold=threshold, event=json_format.MessageToJson(event, indent=None),
    ))
    return event


def _worst(verdict: Judgement, settings: MonitorSettings) -> tuple[int | None, str, float, float]:
    if verdict.accuracy is not None and verdict.labelled >= settings.min_labels_for_accuracy \
            and verdict.accuracy < settings.min_live_accuracy:
        return events_pb2.DRIFT_KIND_ACCURACY, "live_accuracy", verdict.accuracy, settings.min_live_accuracy
    if verdict.worst_score > verdict.threshold:
        kind = events_pb2.DRIFT_KIND_PREDICTION if verdict.worst_feature == "confidence" else events_pb2.DRIFT_KIND_INPUT
        return kind, verdict.worst_feature, verdict.worst_score, verdict.threshold
    return None, "", 0.0, 0.0
