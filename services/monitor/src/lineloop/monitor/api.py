"""MonitorService: model health, drift report, alert stream."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
from google.protobuf import json_format
from sqlalchemy import func, select

from lineloop.monitor import drift
from lineloop.monitor.settings import MonitorSettings
from lineloop.monitor.state import FEATURES, drift_reports, frames, labels, lines, rejections
from lineloop.monitor.windows import judge
from lineloop.runtime import abort
from lineloop.storage.sql import Database, as_utc, utcnow
from lineloop.v1 import events_pb2, monitor_pb2, monitor_pb2_grpc

ALERT_POLL_S = 1.0


class MonitorApi(monitor_pb2_grpc.MonitorServiceServicer):
    def __init__(self, db: Database, settings: MonitorSettings) -> None:
        self._db = db
        self._settings = settings

    async def GetModelHealth(self, request, context):
        with self._db.session() as s:
            line = await self._line(s, request.line_id, context)
            rows = s.execute(
                select(frames.c.model_version, frames.c.predicted_class, labels.c.label_class, frames.c.confidence)
                .outerjoin(labels, labels.c.frame_id == frames.c.frame_id)
                .where(frames.c.line_id == line.line_id)
            ).all()
            rejected = dict(s.execute(
                select(rejections.c.reason, rejections.c.count).where(rejections.c.line_id == line.line_id)
            ).all())
        health = monitor_pb2.ModelHealth(
            line_id=line.line_id, model_name=request.model_name or line.model_name, frames_ingested=len(rows),
            frames_rejected=sum(rejected.values()), reject_reasons=rejected,
            drift_active=line.drift_until is not None and as_utc(line.drift_until) > utcnow(),
        )
        by_version: dict[str, list] = {}
        for r in rows:
            if r.model_version:
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
            verdict = judge(s, line.line_id, self._settings)
            recent = s.execute(
                select(drift_reports.c.event).where(drift_reports.c.line_id == line.line_id)
                .order_by(drift_reports.c.detected_at.desc()).limit(10)
            ).scalars().all()
        report = monitor_pb2.DriftReport(line_id=line.line_id)
        report.generated_at.FromDatetime(utcnow())
        if verdict is not None:
            report.reference.start.FromDatetime(verdict.reference.start)
            report.reference.end.FromDatetime(verdict.reference.end)
            report.current.start.FromDatetime(verdict.current.start)
            report.current.end.FromDatetime(verdict.current.end)
            for feature in FEATURES:
                ref, cur = verdict.reference.values[feature], verdict.current.values[feature]
                score = verdict.scores[feature]
                report.features.append(monitor_pb2.FeatureDrift(
                    feature=feature, score=score, threshold=verdict.threshold,
                    reference_mean=sum(ref) / len(ref), current_mean=sum(cur) / len(cur),
                    drifted=score > verdict.threshold,
                ))
        for raw in recent:
            report.recent.append(json_format.Parse(raw, events_pb2.DriftDetected()))
        return report

    async def WatchAlerts(self, request, context):
        """Streams drift reports as they are recorded (by any replica: read from the database)."""
        since = utcnow()
        while not context.cancelled():
            with self._db.session() as s:
                query = select(drift_reports.c.event, drift_reports.c.detected_at).where(
                    drift_reports.c.detected_at > since).order_by(drift_reports.c.detected_at)
                if request.line_id:
                    query = query.where(drift_reports.c.line_id == request.line_id)
                rows = s.execute(query).all()
            for raw, detected_at in rows:
                since = max(since, as_utc(detected_at))
                yield json_format.Parse(raw, events_pb2.DriftDetected())
            await asyncio.sleep(ALERT_POLL_S)

    async def _line(self, s, line_id: str, context):
        if not line_id:
            known = s.execute(select(func.count()).select_from(lines)).scalar_one()
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "LINE_REQUIRED",
                        f"line_id is required ({known} lines known)", service="monitor")
        line = s.execute(select(lines).where(lines.c.line_id == line_id)).first()
        if line is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, "UNKNOWN_LINE",
                        f"no frames seen for line {line_id!r}", service="monitor", line_id=line_id)
        return line
