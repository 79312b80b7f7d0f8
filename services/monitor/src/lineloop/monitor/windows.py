"""Reading the reference and current windows of a line, and judging them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Row
from sqlalchemy.orm import Session

from lineloop.monitor import drift, state
from lineloop.monitor.settings import MonitorSettings


@dataclass
class Window:
    start: datetime
    end: datetime
    # Quality statistics of every frame; prediction statistics (confidence) of the frames the
    # production model scored: a frame ingested while Triton was down has no confidence, not a
    # confidence of 0, and a canary's answers would move them because the model changed, not
    # the frames (the canary is judged on its own live evidence, GetModelHealth).
    values: dict[str, list[float]]
    size: int


@dataclass
class Judgement:
    reference: Window
    current: Window
    scores: dict[str, float]  # features both windows have values of
    # PSI above this is drift: the configured threshold, or sampling noise on small windows
    # (a prediction statistic's windows are smaller while frames go unscored).
    thresholds: dict[str, float]
    worst_feature: str
    worst_score: float
    accuracy: float | None
    labelled: int

    @property
    def drifted(self) -> bool:
        return self.worst_score > self.thresholds[self.worst_feature]


def _window(session: Session, line_id: str, first_seq: int, last_seq: int, camera_id: str | None) -> Window | None:
    rows = state.window_rows(session, line_id, first_seq, last_seq, camera_id)
    if not rows:
        return None
    values = {f: [getattr(r, f) for r in rows] for f in state.QUALITY}
    values.update({f: [getattr(r, f) for r in rows if r.scored and not r.canary] for f in state.PREDICTION})
    return Window(rows[0].ingested_at, rows[-1].ingested_at, values, len(rows))


def judge(session: Session, line: Row, settings: MonitorSettings) -> Judgement | None:
    """Scores of the line's newest window against its reference; None until both are full.

    `line` is a line's row, or a camera's (state.cameras: the same counters, of that camera's own
    arrival numbers): a camera is judged against its own reference, live accuracy is the line's.
    """
    camera_id = getattr(line, "camera_id", None)
    ref_first = line.reference_from_seq
    ref_last = ref_first + settings.reference_frames - 1
    if line.frames_seen < ref_last + settings.current_frames:
        return None
    reference = _window(session, line.line_id, ref_first, ref_last, camera_id)
    current = _window(session, line.line_id, line.frames_seen - settings.current_frames + 1, line.frames_seen, camera_id)
    if reference is None or current is None or reference.size < settings.reference_frames:
        return None
    judged = [f for f in state.FEATURES if reference.values[f] and current.values[f]]
    scores = drift.feature_scores({f: reference.values[f] for f in judged}, {f: current.values[f] for f in judged})
    tail = drift.tail_per_test(settings.false_alarms_per_frame, settings.evaluate_every, len(state.FEATURES))
    thresholds = {
        f: max(settings.psi_threshold, drift.noise_floor(len(reference.values[f]), len(current.values[f]), tail))
        for f in judged
    }
    worst = max(judged, key=lambda f: scores[f] / thresholds[f])
    if camera_id is not None:
        return Judgement(reference, current, scores, thresholds, worst, scores[worst], None, 0)
    pairs = state.labelled_predictions(session, line.line_id, ref_last, settings.current_frames)
    return Judgement(reference, current, scores, thresholds, worst, scores[worst], drift.live_accuracy(pairs), len(pairs))
