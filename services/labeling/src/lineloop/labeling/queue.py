"""The review queue: which frames are worth a human's time, in what order, leased to whom.

A frame's stored `base_score` is the uncertainty of its prediction (margin or
entropy), or a uniform draw from its id when there is no prediction. At each
NextTasks call the best candidates are re-ranked with what changes over time:
class balance of the human labels so far, camera diversity, and a boost for
frames in the scope of an active drift, a boost for frames a canary scored (the
registry holds a canary until there are labels to judge it by), and a boost for frames
the gate asked for: test-split frames of a class a held candidate lacked evidence on.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from lineloop.labeling import state
from lineloop.labeling.settings import LabelingSettings
from lineloop.labeling.splits import split_of
from lineloop.v1.common_pb2 import Prediction, PredictionStatus


def as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything lineloop stores is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def usable_prediction(*candidates: Prediction) -> Prediction | None:
    """The first prediction with status OK and scores (cloud before edge)."""
    for pred in candidates:
        if pred.status == PredictionStatus.PREDICTION_STATUS_OK and pred.scores:
            return pred
    return None


def uncertainty(pred: Prediction, kind: str) -> float:
    """0 = certain, 1 = as unsure as it gets. Margin: 1 - (p1 - p2); entropy: normalised."""
    probs = sorted((max(0.0, p) for p in pred.scores.values()), reverse=True)
    total = sum(probs)
    if total <= 0:
        return 1.0
    probs = [p / total for p in probs]
    if kind == "entropy":
        if len(probs) < 2:
            return 0.0
        return -sum(p * math.log(p) for p in probs if p > 0) / math.log(len(probs))
    second = probs[1] if len(probs) > 1 else 0.0
    return 1.0 - (probs[0] - second)


def uniform_draw(frame_id: str) -> float:
    """A stable uniform number in [0, 1) from the frame id: frames without a prediction are sampled uniformly."""
    return int.from_bytes(hashlib.sha256(frame_id.encode()).digest()[:8], "big") / 2**64


def base_score(pred: Prediction | None, frame_id: str, kind: str) -> tuple[float, str]:
    if pred is None:
        return uniform_draw(frame_id), "uniform"
    return uncertainty(pred, kind), kind


@dataclass
class Ranked:
    row: object
    priority: float
    why: str


def in_drift_scope(row, drift) -> bool:
    return (
        row.line_id == drift.line_id
        and as_utc(row.captured_at) >= as_utc(drift.since)
        and (not drift.camera_id or row.camera_id == drift.camera_id)
        and (not drift.model_name or row.model_name == drift.model_name)
        and (not drift.model_version or row.model_version == drift.model_version)
    )


def rank(rows, drifts, by_class: dict[str, int], by_camera: dict[str, int], cfg: LabelingSettings,
         wanted: dict[str, frozenset[str]] | None = None, second_review: frozenset[str] = frozenset()) -> list[Ranked]:
    """Order candidates by value to the model, highest first; `why` says what contributed.

    `wanted`: per line, the classes the gate lacked test frames of ("" = any class).
    `second_review`: frames whose label was flagged as likely wrong (a cut may be waiting on them).
    """
    top_class = max(by_class.values(), default=0)
    top_camera = max(by_camera.values(), default=0)
    ranked = []
    for row in rows:
        parts = [f"{row.score_kind}={row.base_score:.2f}"]
        priority = cfg.weight_uncertainty * row.base_score
        if row.predicted_class and top_class:
            # Under-represented predicted classes first: 1 for a class nobody labelled yet.
            balance = 1.0 - by_class.get(row.predicted_class, 0) / top_class
            priority += cfg.weight_class_balance * balance
            parts.append(f"balance={balance:.2f}")
        if top_camera:
            diversity = 1.0 - by_camera.get(row.camera_id, 0) / top_camera
            priority += cfg.weight_camera_diversity * diversity
            parts.append(f"camera={diversity:.2f}")
        hits = [d for d in drifts if in_drift_scope(row, d)]
        if hits:
            priority += cfg.drift_boost
            parts.append(f"drift:{hits[0].drift_id}")
        if row.prediction and Prediction.FromString(row.prediction).canary:
            priority += cfg.canary_boost
            parts.append("canary")
        if wanted_by_gate(row, (wanted or {}).get(row.line_id, frozenset()), cfg):
            priority += cfg.evidence_boost
            parts.append(f"evidence:{row.predicted_class or 'any'}")
        if row.frame_id in second_review:
            priority += cfg.second_review_boost
            parts.append("second-review")
        ranked.append(Ranked(row, priority, " ".join(parts)))
    ranked.sort(key=lambda r: (-r.priority, r.row.frame_id))
    return ranked


def wanted_by_gate(row, wanted: frozenset[str], cfg: LabelingSettings) -> bool:
    """A frame whose label would be the evidence a held candidate waits for: its image puts it in
    the test split (the only split the gate judges on) and its predicted class is one asked for."""
    return bool(wanted) and ("" in wanted or row.predicted_class in wanted) and (
        split_of(row.sha256, cfg.split_val, cfg.split_test) == "test")


def spread_cameras(ranked: list[Ranked], cfg: LabelingSettings) -> list[Ranked]:
    """Within one batch, each further frame of an already-picked camera counts a little less.

    Greedy, and penalties only grow, so the adjusted priorities stay in descending order.
    """
    picked: dict[str, int] = {}
    remaining = list(enumerate(ranked))
    out = []

    def penalty(item: tuple[int, Ranked]) -> float:
        return cfg.weight_camera_diversity * 0.5 * picked.get(item[1].row.camera_id, 0)

    while remaining:
        best = max(remaining, key=lambda item: (item[1].priority - penalty(item), -item[0]))
        remaining.remove(best)
        chosen, cost = best[1], penalty(best)
        if cost:
            chosen = Ranked(chosen.row, chosen.priority - cost, f"{chosen.why} spread=-{cost:.2f}")
        picked[chosen.row.camera_id] = picked.get(chosen.row.camera_id, 0) + 1
        out.append(chosen)
    return out


def next_tasks(
    s: Session, cfg: LabelingSettings, annotator: str, line_id: str, max_tasks: int, now: datetime
) -> list[tuple[Ranked, str, datetime]]:
    """Lease up to `max_tasks` of the most valuable free frames to `annotator`; (ranked, lease_id, expiry)."""
    drifts = state.active_drifts(s, line_id, now)
    rows = {r.frame_id: r for r in state.queue_candidates(s, line_id, now, cfg.queue_candidates)}
    for drift in drifts:
        for r in state.drift_candidates(s, drift, now, cfg.queue_candidates):
            rows.setdefault(r.frame_id, r)
    wanted: dict[str, frozenset[str]] = {}
    for request in state.wanted_evidence(s, line_id):
        wanted[request["line_id"]] = wanted.get(request["line_id"], frozenset()) | set(request["wanted"])
    # About one frame in 1/split_test is in the test split: read that many more to find them.
    scan = int(cfg.queue_candidates / max(cfg.split_test, 0.01))
    for line, classes in wanted.items():
        for r in state.evidence_candidates(s, line, sorted(classes), now, scan):
            if wanted_by_gate(r, classes, cfg):
                rows.setdefault(r.frame_id, r)
    for r in state.review_candidates(s, line_id, now, cfg.queue_candidates):
        rows.setdefault(r.frame_id, r)
    # A second review is by someone else: the author of the flagged label does not get the frame.
    reviews = state.pending_reviews(s, list(rows))
    rows = {f: r for f, r in rows.items() if annotator not in reviews.get(f, ())}
    by_class, by_camera = state.human_label_counts(s, line_id)
    ranked = rank(list(rows.values()), drifts, by_class, by_camera, cfg, wanted, frozenset(reviews))
    # Only the head of the ranking can end up in this batch; spreading it is enough.
    ranked = spread_cameras(ranked[: max_tasks * 4], cfg) + ranked[max_tasks * 4:]
    expires = now + timedelta(seconds=cfg.lease_s)
    leased = []
    for candidate in ranked:
        if len(leased) == max_tasks:
            break
        lease_id = uuid.uuid4().hex
        # Locked with SKIP LOCKED first: a frame another replica is leasing right now is passed
        # over, never waited on; the conditional update then fails if someone took it since we read.
        if state.lock_if_free(s, candidate.row.frame_id, now) and state.try_lease(
            s, candidate.row.frame_id, lease_id, annotator, now, expires
        ):
            leased.append((candidate, lease_id, expires))
    return leased
