"""frames.ingested.v1: record the frame's statistics and prediction; judge the line's and the
camera's drift, the line's scoring and the camera's refusals and silence.

Several replicas handle one line's frames at once: everything below runs in the handler's
transaction with the line's row locked (`state.open_line`), then the camera's
(`state.open_camera`), see lineloop.monitor.state.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from google.protobuf import json_format
from opentelemetry import metrics as otel_metrics
from sqlalchemy import Row
from sqlalchemy.orm import Session

from lineloop.bus import EventContext
from lineloop.monitor import alerts, state
from lineloop.monitor.settings import MonitorSettings
from lineloop.monitor.windows import Judgement, judge
from lineloop.storage.sql import as_utc, utcnow
from lineloop.v1 import common_pb2, events_pb2

log = logging.getLogger(__name__)
_meter = otel_metrics.get_meter(__name__)
drift_score = _meter.create_gauge("lineloop.monitor.drift_score", unit="{psi}", description="PSI of a quality statistic, current vs reference window. Attributes: line, feature.")
live_accuracy = _meter.create_gauge("lineloop.monitor.live_accuracy", unit="{fraction}", description="Share of human-labelled frames the serving model got right. Attributes: line.")
frames_unscored = _meter.create_counter(
    "lineloop.monitor.frames_unscored", unit="{frame}",
    description="Frames ingested without a prediction: kept out of prediction statistics, never scored later. Attributes: line.",
)
unscored_share = _meter.create_gauge("lineloop.monitor.unscored_share", unit="{fraction}", description="Share of the current window's frames ingested without a prediction. Attributes: line.")
scoring_outage = _meter.create_gauge("lineloop.monitor.scoring_outage", unit="{outage}", description="1 while the line's unscored share is above max_unscored_share. Attributes: line.")


def make_handler(settings: MonitorSettings):
    async def on_frame_ingested(msg: events_pb2.FrameIngested, ctx: EventContext) -> None:
        s = ctx.session
        pred = msg.prediction if msg.prediction.status == common_pb2.PREDICTION_STATUS_OK else None
        # Before any model serves the line, retraining targets the model
        # training names after the line's dataset (its default pattern).
        line = state.open_line(s, msg.line_id, model_name=(pred.model_name if pred else "") or msg.line_id)
        if state.frame_known(s, msg.frame_id):
            return  # the same frame re-sent under a new event id
        seq = line.frames_seen + 1
        q = msg.quality
        ingested_at = msg.ingested_at.ToDatetime(tzinfo=utcnow().tzinfo) if msg.HasField("ingested_at") else utcnow()
        camera = state.open_camera(s, msg.line_id, msg.camera_id, ingested_at) if msg.camera_id else None
        state.add_frame(s, dict(
            frame_id=msg.frame_id, line_id=msg.line_id, camera_id=msg.camera_id,
            ingested_at=ingested_at, camera_seq=camera.frames_seen + 1 if camera is not None else None,
            seq=seq, brightness_mean=q.brightness_mean, brightness_std=q.brightness_std, contrast=q.contrast,
            sharpness=q.sharpness, mean_r=q.mean_r, mean_g=q.mean_g, mean_b=q.mean_b,
            saturation_share=q.saturation_share,
            confidence=max(pred.scores.values()) if pred and pred.scores else 0.0,
            predicted_class=pred.predicted_class if pred else "",
            # Unscored: the model that should have scored it ("" before the line had one).
            model_name=msg.prediction.model_name, model_version=pred.model_version if pred else "",
            canary=bool(pred and pred.canary),
        ))
        missing_reason = None
        if pred is None:
            missing_reason = msg.prediction.missing_reason or "the event carries no prediction"
            frames_unscored.add(1, {"line": msg.line_id})
        state.count_frame(s, msg.line_id, seq, model_name=pred.model_name if pred else "", missing_reason=missing_reason)
        if seq % settings.evaluate_every == 0:
            evaluate(ctx, msg.line_id, settings)
        if camera is not None:
            on_camera_frame(ctx, camera, settings, accepted=True, at=ingested_at)

    return on_frame_ingested


def on_camera_frame(ctx: EventContext, camera: Row, settings: MonitorSettings, *, accepted: bool,
                    at: datetime) -> None:
    """A frame of the locked camera, accepted or refused: its silence ends, its refused share
    moves, and every evaluate_every accepted frames its windows are judged."""
    s = ctx.session
    now = utcnow()
    outcomes = state.count_camera_frame(s, camera, at=at, accepted=accepted, keep=settings.camera_refused_frames)
    active = state.active_alerts_of(s, camera.line_id, camera.camera_id)
    silent = active.get(events_pb2.ALERT_KIND_CAMERA_SILENT)
    if silent is not None:
        alerts.clear_alert(s, ctx.emit, silent, now=now, score=0.0, detail="the camera sends frames again")
    alerts.judge_refusals(s, ctx.emit, camera, outcomes, settings, now, active.get(events_pb2.ALERT_KIND_CAMERA_REFUSED))
    camera_seq = camera.frames_seen + 1
    if not accepted or camera_seq % settings.evaluate_every:
        return
    counted = state.get_camera(s, camera.line_id, camera.camera_id)
    verdict = judge(s, counted, settings)
    if verdict is None:
        return
    line = state.get_line(s, camera.line_id)
    alerts.judge_drift(
        s, ctx.emit, kind=events_pb2.ALERT_KIND_CAMERA_DRIFT, active=active.get(events_pb2.ALERT_KIND_CAMERA_DRIFT),
        raise_now=verdict.drifted, calm=alerts.is_calm(verdict, settings), verdict=verdict, frames_seen=camera_seq,
        settings=settings, now=now, line_id=camera.line_id, camera_id=camera.camera_id,
        feature=verdict.worst_feature, score=verdict.worst_score, threshold=verdict.thresholds[verdict.worst_feature],
        model_name=line.model_name, model_version=state.latest_model_version(s, camera.line_id) or "",
    )


def evaluate(ctx: EventContext, line_id: str, settings: MonitorSettings) -> events_pb2.DriftDetected | None:
    """Judge the line's scoring and windows; report drift (and ask for training) once per episode.

    Called with the line's row locked: of replicas judging the line at once, the first to report
    drift sets `drift_until`, and the others, waiting on the lock, see it and stay quiet.
    """
    s = ctx.session
    now = utcnow()
    line = state.get_line(s, line_id)
    check_scoring(ctx, line, settings, now)
    verdict = judge(s, line, settings)
    if verdict is None:
        return None
    for feature, score in verdict.scores.items():
        drift_score.set(score, {"line": line_id, "feature": feature})
    state.record_scores(s, line_id, now, verdict.scores, verdict.thresholds)
    if verdict.accuracy is not None:
        live_accuracy.set(verdict.accuracy, {"line": line_id})

    kind, feature, score, threshold = _worst(verdict, settings)
    event = None
    if kind is not None and (line.drift_until is None or as_utc(line.drift_until) <= now):
        event = _report_drift(ctx, line, verdict, settings, now, kind, feature, score, threshold)
    # The line-drift alert: raised with a drift report, cleared by hysteresis (the report's
    # cooldown only limits how often labeling is told).
    alerts.judge_drift(
        s, ctx.emit, kind=events_pb2.ALERT_KIND_LINE_DRIFT,
        active=state.active_alerts_of(s, line_id).get(events_pb2.ALERT_KIND_LINE_DRIFT),
        raise_now=kind is not None, calm=alerts.is_calm(verdict, settings) and not _accuracy_low(verdict, settings),
        verdict=verdict, frames_seen=line.frames_seen, settings=settings, now=now, line_id=line_id, feature=feature,
        score=score, threshold=threshold, model_name=line.model_name,
        model_version=event.model_version if event else state.latest_model_version(s, line_id) or "",
        drift_id=event.drift_id if event else "",
    )
    return event


def _report_drift(ctx: EventContext, line: Row, verdict: Judgement, settings: MonitorSettings, now: datetime,
                  kind: int, feature: str, score: float, threshold: float) -> events_pb2.DriftDetected:
    s = ctx.session
    line_id = line.line_id
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
    version = state.latest_model_version(s, line_id)
    if version:
        event.model_version = version
    # Drift is reported, not answered with a training request: a model trained now would learn the
    # same labels as the one that drifted. Labeling boosts the drifting frames and cuts the next
    # dataset version sooner (drift.detected.v1), and that version is what training runs on.
    ctx.emit(event)
    state.start_drift_episode(
        s, line_id, until=now + timedelta(seconds=settings.drift_cooldown_s), drift_id=event.drift_id,
        detected_at=now, kind=kind, feature=feature, score=score, threshold=threshold,
        event_json=json_format.MessageToJson(event, indent=None),
    )
    return event


def current_unscored_share(s: Session, line: Row, settings: MonitorSettings) -> tuple[float, int]:
    """(share of unscored frames, frames) in the line's newest `current_frames` frames."""
    first = max(1, line.frames_seen - settings.current_frames + 1)
    unscored, total = state.unscored_among(s, line.line_id, first, line.frames_seen)
    return (unscored / total if total else 0.0), total


def check_scoring(ctx: EventContext, line: Row, settings: MonitorSettings, now: datetime) -> None:
    """A scoring outage is its own alert: raised (once) when more than max_unscored_share of the
    newest frames came without a prediction on a line that has been scored before (a line waiting
    for its first model is not out of anything), cleared once the share is below
    unscored_clear_share (hysteresis: a share hovering at the threshold does not flap)."""
    s = ctx.session
    share, frames = current_unscored_share(s, line, settings)
    ever_scored = line.frames_seen > line.frames_unscored
    in_outage = line.scoring_outage_since is not None
    raise_now = not in_outage and ever_scored and share > settings.max_unscored_share
    clear_now = in_outage and share < settings.unscored_clear_share
    unscored_share.set(share, {"line": line.line_id})
    scoring_outage.set(1 if (in_outage and not clear_now) or raise_now else 0, {"line": line.line_id})
    detail = (f"{share:.0%} of the newest {frames} frames have no prediction"
              + (f" (last reason: {line.last_missing_reason})" if line.last_missing_reason else ""))
    active = state.active_alerts_of(s, line.line_id).get(events_pb2.ALERT_KIND_SCORING_OUTAGE) \
        if raise_now or clear_now else None
    if raise_now:
        log.warning("scoring outage on line %s: %.0f%% of the newest frames have no prediction (%s); "
                    "they stay out of prediction statistics and are not scored later",
                    line.line_id, share * 100, line.last_missing_reason, extra={"line_id": line.line_id})
        state.set_scoring_outage(s, line.line_id, now)
        if active is None:
            alerts.raise_alert(s, ctx.emit, kind=events_pb2.ALERT_KIND_SCORING_OUTAGE, line_id=line.line_id, now=now,
                               feature="unscored_share", score=share, threshold=settings.max_unscored_share,
                               clear_below=settings.unscored_clear_share, detail=detail, model_name=line.model_name)
    elif clear_now:
        log.info("scoring outage on line %s is over (%.0f%% unscored)", line.line_id, share * 100,
                 extra={"line_id": line.line_id})
        state.set_scoring_outage(s, line.line_id, None)
        if active is not None:
            alerts.clear_alert(s, ctx.emit, active, now=now, score=share, detail=detail)


def _accuracy_low(verdict: Judgement, settings: MonitorSettings) -> bool:
    return verdict.accuracy is not None and verdict.labelled >= settings.min_labels_for_accuracy \
        and verdict.accuracy < settings.min_live_accuracy


def _worst(verdict: Judgement, settings: MonitorSettings) -> tuple[int | None, str, float, float]:
    if _accuracy_low(verdict, settings):
        return events_pb2.DRIFT_KIND_ACCURACY, "live_accuracy", verdict.accuracy, settings.min_live_accuracy
    if verdict.drifted:
        feature = verdict.worst_feature
        kind = events_pb2.DRIFT_KIND_PREDICTION if feature in state.PREDICTION else events_pb2.DRIFT_KIND_INPUT
        return kind, feature, verdict.worst_score, verdict.thresholds[feature]
    return None, "", 0.0, 0.0
