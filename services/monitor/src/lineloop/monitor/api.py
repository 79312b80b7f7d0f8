"""MonitorService: model health, drift report, alert stream."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import grpc
from google.protobuf import json_format

from lineloop.monitor import drift, state
from lineloop.monitor.handlers_frames_ingested import current_unscored_share
from lineloop.monitor.settings import MonitorSettings
from lineloop.monitor.windows import judge
from lineloop.runtime import abort
from lineloop.storage.sql import Database, as_utc, utcnow
from lineloop.v1 import events_pb2, monitor_pb2, monitor_pb2_grpc

ALERT_POLL_S = 1.0
# Replicas commit in their own time: a transition stamped a little before the newest one seen may
# become visible later. Each poll looks back this far and skips what it already sent.
ALERT_LOOKBACK_S = 10.0


class MonitorApi(monitor_pb2_grpc.MonitorServiceServicer):
    def __init__(self, db: Database, settings: MonitorSettings) -> None:
        self._db = db
        self._settings = settings

    async def GetModelHealth(self, request, context):
        with self._db.session() as s:
            line = await self._line(s, request.line_id, context)
            rows = state.scored_frames_with_labels(s, line.line_id)
            rejected = state.rejection_counts(s, line.line_id)
            share, window_frames = current_unscored_share(s, line, self._settings)
            active = state.active_alerts(s, line.line_id)
        health = monitor_pb2.ModelHealth(
            # frames_seen, not rows: old frames are pruned (retention_s), the count is not.
            line_id=line.line_id, model_name=request.model_name or line.model_name, frames_ingested=line.frames_seen,
            frames_rejected=sum(rejected.values()), reject_reasons=rejected,
            drift_active=line.drift_until is not None and as_utc(line.drift_until) > utcnow(),
            scoring=monitor_pb2.ScoringHealth(
                outage=line.scoring_outage_since is not None, unscored_share=share,
                threshold=self._settings.max_unscored_share, window_frames=window_frames,
                frames_unscored=line.frames_unscored, last_missing_reason=line.last_missing_reason or "",
            ),
        )
        for row in active:
            health.active_alerts.append(json_format.Parse(row.raised_event, events_pb2.Alert()))
        if line.scoring_outage_since is not None:
            health.scoring.outage_since.FromDatetime(as_utc(line.scoring_outage_since))
        by_version: dict[str, list] = {}
        for r in rows:
            by_version.setdefault(r.model_version, []).append(r)
        for version, vrows in sorted(by_version.items()):
            mix = Counter(r.predicted_class for r in vrows)
            accuracy = drift.live_accuracy([(r.predicted_class, r.label_class) for r in vrows if r.label_class])
            health.versions.append(monitor_pb2.VersionHealth(
                model_version=version, frames_scored=len(vrows),
                frames_labelled=sum(1 for r in vrows if r.label_class),
                live_accuracy=accuracy if accuracy is not None else 0.0,
                class_mix={k: v / len(vrows) for k, v in mix.items()},
                mean_confidence=sum(r.confidence for r in vrows) / len(vrows),
            ))
        return health

    async def GetDriftReport(self, request, context):
        with self._db.session() as s:
            line = await self._line(s, request.line_id, context)
            verdict = judge(s, line, self._settings)
            recent = state.recent_drift_events(s, line.line_id, 10)
        report = monitor_pb2.DriftReport(line_id=line.line_id)
        report.generated_at.FromDatetime(utcnow())
        if verdict is not None:
            report.reference.start.FromDatetime(verdict.reference.start)
            report.reference.end.FromDatetime(verdict.reference.end)
            report.current.start.FromDatetime(verdict.current.start)
            report.current.end.FromDatetime(verdict.current.end)
            for feature, score in verdict.scores.items():  # a prediction statistic without predictions is left out
                ref, cur = verdict.reference.values[feature], verdict.current.values[feature]
                threshold = verdict.thresholds[feature]
                report.features.append(monitor_pb2.FeatureDrift(
                    feature=feature, score=score, threshold=threshold,
                    reference_mean=sum(ref) / len(ref), current_mean=sum(cur) / len(cur),
                    drifted=score > threshold,
                ))
        for raw in recent:
            report.recent.append(json_format.Parse(raw, events_pb2.DriftDetected()))
        return report

    async def WatchAlerts(self, request, context):
        """Streams alerts as they are raised and cleared (by any replica: read from the database)."""
        started = newest = utcnow()
        sent: dict[tuple[str, int], object] = {}  # (alert_id, state) -> its time, within the lookback
        while not context.cancelled():
            look_from = max(started, newest - timedelta(seconds=ALERT_LOOKBACK_S))
            with self._db.session() as s:
                rows = state.alert_events_since(s, look_from, request.line_id)
            for at, raw in rows:
                alert = json_format.Parse(raw, events_pb2.Alert())
                key = (alert.alert_id, alert.state)
                if key in sent:
                    continue
                sent[key] = at
                newest = max(newest, at)
                yield alert
            sent = {k: at for k, at in sent.items() if at > look_from}
            await asyncio.sleep(ALERT_POLL_S)

    async def _line(self, s, line_id: str, context):
        if not line_id:
            known = state.count_lines(s)
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "LINE_REQUIRED",
                        f"line_id is required ({known} lines known)", service="monitor")
        line = state.get_line(s, line_id)
        if line is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, "UNKNOWN_LINE",
                        f"no frames seen for line {line_id!r}", service="monitor", line_id=line_id)
        return line
