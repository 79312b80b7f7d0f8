"""Deleting what the monitor no longer needs: frames (and their labels) older than retention_s
that no window needs, labels whose frame never came, drift scores (the dashboard's history),
alerts cleared before retention_s.
Drift reports, rejection counts, the model-version timeline and the line counters are kept
(small: one row per episode, reason, stage change, line).

Every replica prunes now and then; they can do so at the same time (see state.prune).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from opentelemetry import metrics as otel_metrics

from lineloop.monitor import state
from lineloop.monitor.settings import MonitorSettings
from lineloop.runtime.periodic import Periodic
from lineloop.storage.sql import Database, utcnow

log = logging.getLogger(__name__)
rows_pruned = otel_metrics.get_meter(__name__).create_counter(
    "lineloop.monitor.rows_pruned", unit="{row}", description="Rows deleted past retention. Attributes: table.",
)
# Rows per transaction: short transactions, so handlers on the same process are not held up long.
PRUNE_BATCH = 1000


class Pruner:
    def __init__(self, db: Database, settings: MonitorSettings) -> None:
        self._db = db
        self._settings = settings
        self._periodic = Periodic("monitor-prune", self.prune_once, settings.prune_every_s)

    async def prune_once(self) -> tuple[int, int]:
        """(frames, orphan labels) deleted."""
        s = self._settings
        older_than = utcnow() - timedelta(seconds=s.retention_s)
        frames = 0
        while True:
            async with self._db.write() as session:
                deleted = state.prune(session, older_than=older_than, reference_frames=s.reference_frames,
                                      current_frames=s.current_frames, batch=PRUNE_BATCH)
            frames += deleted
            if deleted < PRUNE_BATCH:
                break
            await asyncio.sleep(0)  # let handlers in between
        async with self._db.write() as session:
            labels = state.prune_orphan_labels(session, older_than=older_than)
            scores = state.prune_scores(session, older_than=older_than)
            cleared = state.prune_alerts(session, older_than=older_than)
        rows_pruned.add(frames, {"table": state.frames.name})
        rows_pruned.add(labels, {"table": state.labels.name})
        rows_pruned.add(scores, {"table": state.score_history.name})
        rows_pruned.add(cleared, {"table": state.alerts.name})
        if frames or labels:
            log.info("pruned %d frames and %d labels older than %s", frames, labels, older_than.isoformat())
        return frames, labels

    async def start(self) -> None:
        await self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()
