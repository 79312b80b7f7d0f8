"""Alerts: raised once, cleared once (alerts.changed.v1, docs/monitor.md#alerts).

Every function here runs in the caller's transaction with the rows it judges locked (the line's,
then the camera's: see lineloop.monitor.state), so of replicas judging the same thing at once the
first raises or clears and the others, waiting on the lock, see it done. Events go through the
outbox in that same transaction (`emit`: EventContext.emit, or Bus.add_to_outbox off a handler).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime

from google.protobuf import json_format
from google.protobuf.message import Message
from opentelemetry import metrics as otel_metrics
from sqlalchemy import Row
from sqlalchemy.orm import Session

from lineloop.monitor import state
from lineloop.monitor.settings import MonitorSettings
from lineloop.monitor.windows import Judgement
from lineloop.v1 import events_pb2

log = logging.getLogger(__name__)
active_alerts = otel_metrics.get_meter(__name__).create_gauge(
    "lineloop.monitor.active_alerts", unit="{alert}",
    description="1 while an alert is raised, 0 once cleared. Attributes: kind, line, camera (empty: the whole line).",
)

Emit = Callable[[Message], object]
CAMERA_KINDS = (events_pb2.ALERT_KIND_CAMERA_DRIFT, events_pb2.ALERT_KIND_CAMERA_SILENT,
                events_pb2.ALERT_KIND_CAMERA_REFUSED)
DRIFT_KINDS = (events_pb2.ALERT_KIND_LINE_DRIFT, events_pb2.ALERT_KIND_CAMERA_DRIFT)


def kind_name(kind: int) -> str:
    return events_pb2.AlertKind.Name(kind).removeprefix("ALERT_KIND_").lower()


def _gauge_attributes(kind: int, line_id: str, camera_id: str) -> dict[str, str]:
    return {"kind": kind_name(kind), "line": line_id, "camera": camera_id}


def _json(alert: events_pb2.Alert) -> str:
    return json_format.MessageToJson(alert, indent=None)


def raise_alert(s: Session, emit: Emit, *, kind: int, line_id: str, camera_id: str = "", now: datetime,
                feature: str, score: float, threshold: float, clear_below: float, detail: str,
                model_name: str = "", model_version: str = "", drift_id: str = "") -> events_pb2.Alert:
    """Record and publish a new alert; the caller has checked that none of its kind is active."""
    alert = events_pb2.Alert(
        alert_id=str(uuid.uuid4()), kind=kind, state=events_pb2.ALERT_STATE_RAISED, line_id=line_id,
        camera_id=camera_id, model_name=model_name, model_version=model_version, feature=feature, score=score,
        threshold=threshold, clear_below=clear_below, detail=detail, drift_id=drift_id,
    )
    alert.raised_at.FromDatetime(now)
    alert.changed_at.FromDatetime(now)
    state.raise_alert(s, alert_id=alert.alert_id, kind=kind, line_id=line_id, camera_id=camera_id, at=now,
                      event_json=_json(alert))
    emit(alert)
    active_alerts.set(1, _gauge_attributes(kind, line_id, camera_id))
    log.warning("alert raised: %s on line %s%s: %s", kind_name(kind), line_id,
                f" camera {camera_id}" if camera_id else "", detail,
                extra={"line_id": line_id, "camera_id": camera_id, "alert_id": alert.alert_id})
    return alert


def clear_alert(s: Session, emit: Emit, row: Row, *, now: datetime, score: float, detail: str) -> events_pb2.Alert | None:
    """Clear an active alert (its row from state.active_alerts_of); None if another replica did."""
    alert = json_format.Parse(row.raised_event, events_pb2.Alert())
    alert.state = events_pb2.ALERT_STATE_CLEARED
    alert.score = score
    alert.detail = detail
    alert.changed_at.FromDatetime(now)
    if not state.clear_alert(s, row.alert_id, at=now, event_json=_json(alert)):
        return None
    emit(alert)
    active_alerts.set(0, _gauge_attributes(row.kind, row.line_id, row.camera_id))
    log.info("alert cleared: %s on line %s%s: %s", kind_name(row.kind), row.line_id,
             f" camera {row.camera_id}" if row.camera_id else "", detail,
             extra={"line_id": row.line_id, "camera_id": row.camera_id, "alert_id": row.alert_id})
    return alert


def scores_detail(verdict: Judgement) -> str:
    return ", ".join(f"{k}={v:.3f}" for k, v in sorted(verdict.scores.items(), key=lambda kv: -kv[1]))


def judge_drift(s: Session, emit: Emit, *, kind: int, active: Row | None, raise_now: bool, calm: bool,
                verdict: Judgement, frames_seen: int, settings: MonitorSettings, now: datetime, line_id: str,
                camera_id: str = "", feature: str = "", score: float = 0.0, threshold: float = 0.0,
                model_name: str = "", model_version: str = "", drift_id: str = "") -> None:
    """Hysteresis of a drift alert judged at arrival number `frames_seen` (of the line or camera).

    Raised when `raise_now` (a statistic above its threshold); cleared once every evaluation over a
    whole current window was `calm` (every statistic below drift_clear_fraction of its threshold).
    Between the two levels nothing changes: the alert does not flap on a score near its threshold.
    """
    if active is None:
        if raise_now:
            raise_alert(s, emit, kind=kind, line_id=line_id, camera_id=camera_id, now=now, feature=feature,
                        score=score, threshold=threshold, clear_below=threshold * settings.drift_clear_fraction,
                        detail=scores_detail(verdict), model_name=model_name, model_version=model_version,
                        drift_id=drift_id)
        return
    if not calm:
        if active.calm_from_seq is not None:
            state.set_alert_calm(s, active.alert_id, None)
        return
    if active.calm_from_seq is None:
        state.set_alert_calm(s, active.alert_id, frames_seen)
    elif frames_seen - active.calm_from_seq >= settings.current_frames:
        worst = max(verdict.scores, key=lambda f: verdict.scores[f] / verdict.thresholds[f])
        clear_alert(s, emit, active, now=now, score=verdict.scores[worst],
                    detail=f"every statistic below {settings.drift_clear_fraction:g} of its threshold for "
                           f"{frames_seen - active.calm_from_seq} frames: {scores_detail(verdict)}")


def is_calm(verdict: Judgement, settings: MonitorSettings) -> bool:
    return all(verdict.scores[f] < settings.drift_clear_fraction * verdict.thresholds[f] for f in verdict.scores)


def judge_refusals(s: Session, emit: Emit, camera: Row, outcomes: str, settings: MonitorSettings,
                   now: datetime, active: Row | None) -> None:
    """The camera-refused alert (`active`, if raised), on the locked camera's newest outcomes
    (state.count_camera_frame). The share is of a whole window already: no calm period on top."""
    if len(outcomes) < settings.camera_refused_frames:
        return  # too few frames yet to call "most" of them anything
    share = outcomes.count("r") / len(outcomes)
    detail = f"{share:.0%} of the camera's newest {len(outcomes)} frames refused by ingest"
    if active is None and share > settings.camera_refused_share:
        raise_alert(s, emit, kind=events_pb2.ALERT_KIND_CAMERA_REFUSED, line_id=camera.line_id,
                    camera_id=camera.camera_id, now=now, feature="refused_share", score=share,
                    threshold=settings.camera_refused_share, clear_below=settings.camera_refused_clear_share,
                    detail=detail + " (`lineloop health show` lists the reasons of the line)")
    elif active is not None and share < settings.camera_refused_clear_share:
        clear_alert(s, emit, active, now=now, score=share, detail=detail)
