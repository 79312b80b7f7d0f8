"""What no event announces: a camera falls silent. Every replica looks now and then for cameras
with no frame (accepted or refused) for camera_silent_s and raises their alert; the alert clears
when the camera's next frame is handled (handlers_frames_ingested.on_camera_frame).

It also sets the active-alert gauges from the database, so each replica's /metrics shows every
active alert, whichever replica raised or cleared it (Prometheus rules take max over replicas).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from lineloop.bus import Bus
from lineloop.monitor import alerts, state
from lineloop.monitor.settings import MonitorSettings
from lineloop.runtime.periodic import Periodic
from lineloop.storage.sql import Database, as_utc, utcnow
from lineloop.v1 import events_pb2

log = logging.getLogger(__name__)
SILENT = events_pb2.ALERT_KIND_CAMERA_SILENT


class CameraWatch:
    def __init__(self, db: Database, bus: Bus, settings: MonitorSettings) -> None:
        self._db = db
        self._bus = bus
        self._settings = settings
        self._periodic = Periodic("monitor-camera-watch", self._pass, settings.alert_check_every_s)
        self._reported: set[tuple[int, str, str]] = set()  # gauge keys this process has set to 1
        self._started_at = None

    async def check_once(self) -> int:
        """Raise the alert of every camera silent for camera_silent_s; returns how many were raised."""
        silent_s = self._settings.camera_silent_s
        if self._started_at is None or (utcnow() - self._started_at).total_seconds() < silent_s:
            # Just started (a restart, a new replica): the backlog of frames is not read yet, and
            # every camera would look silent for as long as the monitor itself was away.
            return 0
        with self._db.session() as s:
            candidates = state.silent_camera_keys(s, quiet_since=utcnow() - timedelta(seconds=silent_s),
                                                  silent_kind=SILENT)
        raised = 0
        for line_id, camera_id in candidates:
            # One transaction per camera, the camera's row locked and the silence judged again
            # under the lock: a frame (or another replica's check) may have come in between.
            async with self._db.write() as s:
                camera = state.open_camera(s, line_id, camera_id, utcnow())
                now = utcnow()
                quiet_for = (now - as_utc(camera.last_frame_at)).total_seconds()
                if quiet_for < silent_s or SILENT in state.active_alerts_of(s, line_id, camera_id):
                    continue
                alerts.raise_alert(
                    s, lambda msg, s=s: self._bus.add_to_outbox(s, msg), kind=SILENT, line_id=line_id,
                    camera_id=camera_id, now=now, feature="quiet_s", score=quiet_for, threshold=silent_s,
                    clear_below=0.0, detail=f"no frame from the camera for {quiet_for:.0f} s (camera_silent_s={silent_s:g})",
                )
                raised += 1
        if raised and self._bus.relay is not None:
            self._bus.relay.wake()
        return raised

    def refresh_gauges(self) -> None:
        with self._db.session() as s:
            active = {(r.kind, r.line_id, r.camera_id) for r in state.active_alerts(s)}
        for kind, line_id, camera_id in active | self._reported:
            alerts.active_alerts.set(1 if (kind, line_id, camera_id) in active else 0,
                                     {"kind": alerts.kind_name(kind), "line": line_id, "camera": camera_id})
        self._reported = active

    async def _pass(self) -> None:
        await self.check_once()
        self.refresh_gauges()

    async def start(self) -> None:
        self._started_at = utcnow()
        await self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()
