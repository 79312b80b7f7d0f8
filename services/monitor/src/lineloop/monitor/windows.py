"""Reading the reference and current windows of a line, and judging them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from lineloop.monitor import drift
from lineloop.monitor.settings import MonitorSettings
from lineloop.monitor.state import FEATURES, frames, labels, lines


@dataclass
class Window:
    start: datetime
    end: datetime
    values: dict[str, list[float]]
    size: int


@dataclass
class Judgement:
    reference: Window
    current: Window
    scores: dict[str, float]
    threshold: float  # PSI above this is drift: the configured threshold, or sampling noise on small windows
    worst_feature: str
    worst_score: float
    accuracy: float | None
    labelled: int


def _window(session: Session, line_id: str, first_seq: int, last_seq: int) -> Window | None:
    rows = session.execute(
        select(frames.c.ingested_at, *(frames.c[f] for f in FEATURES))
        .where(frames.c.line_id == line_id, frames.c.seq >= first_seq, frames.c.seq <= last_seq)
        .order_by(frames.c.seq)
    ).all()
    if not rows:
        return None
    values = {f: [getattr(r, f) for r in rows] for f in FEATURES}
    return Window(rows[0].ingested_at, rows[-1].ingested_at, values, len(rows))


def judge(session: Session, line_id: str, settings: MonitorSettings) -> Judgement | None:
    """Scores of the newest window against the line's reference; None until both are full."""
    line = session.execute(select(lines).where(lines.c.line_id == line_id)).first()
    if line is None:
        return None
    ref_first = line.reference_from_seq
    ref_last = ref_first + settings.reference_frames - 1
    if line.frames_seen < ref_last + settings.current_frames:
        return None
    reference = _window(session, line_id, ref_first, ref_last)
    current = _window(session, line_id, line.frames_seen - settings.current_frames + 1, line.frames_seen)
    if reference is None or current is None or reference.size < settings.reference_frames:
        return None
    scores = drift.feature_scores(reference.values, current.values)
    worst = max(scores, key=scores.get)
    pairs = session.execute(
        select(frames.c.predicted_class, labels.c.label_class)
        .join(labels, labels.c.frame_id == frames.c.frame_id)
        .where(frames.c.line_id == line_id, frames.c.seq > ref_last)
        .order_by(frames.c.seq.desc())
        .limit(settings.current_frames)
    ).all()
    threshold = max(settings.psi_threshold, drift.noise_floor(reference.size, current.size))
    return Judgement(reference, current, scores, threshold, worst, scores[worst], drift.live_accuracy(pairs), len(pairs))
