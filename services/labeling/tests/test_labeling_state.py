"""Queue order, leases and label rules on the real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from sqlalchemy import func, select

from lineloop.bus import outbox
from lineloop.labeling import datasets, labels, queue, state
from lineloop.labeling.labels import LabelRejected
from lineloop.labeling.settings import LabelingSettings
from lineloop.labeling.splits import split_of
from lineloop.storage.sql import Database
from lineloop.v1.events_pb2 import LabelSource

CLASSES = ["ok", "bruise", "rot", "scab"]


def cfg(**overrides) -> LabelingSettings:
    return LabelingSettings(database_url="sqlite://", **overrides)


def submit(s, frame_id, label_class, annotator, lease_id="", note="", now=None):
    return labels.submit(
        s, frame_id=frame_id, label_class=label_class, annotator=annotator, note=note, lease_id=lease_id,
        classes=CLASSES, now=now or datetime.now(UTC), emit=lambda msg: outbox.add(s, msg, source="test"),
    )


def test_uncertainty_margin_and_entropy(helpers):
    sure = helpers.frame_event("l", scores={"ok": 0.97, "bruise": 0.01, "rot": 0.01, "scab": 0.01}).prediction
    torn = helpers.frame_event("l", scores={"ok": 0.45, "bruise": 0.44, "rot": 0.06, "scab": 0.05}).prediction
    flat = helpers.frame_event("l", scores={"ok": 0.25, "bruise": 0.25, "rot": 0.25, "scab": 0.25}).prediction
    for kind in ("margin", "entropy"):
        assert queue.uncertainty(sure, kind) < queue.uncertainty(torn, kind) <= queue.uncertainty(flat, kind)
    assert queue.uncertainty(flat, "entropy") == pytest.approx(1.0)
    assert queue.uncertainty(torn, "margin") == pytest.approx(0.99)


async def test_queue_order_follows_uncertainty_then_drift_boost(labeling_db, ingest_into, helpers):
    c = cfg(auto_accept_threshold=1.1, weight_class_balance=0.0, weight_camera_diversity=0.0)
    frames = {
        "sure": helpers.frame_event("line-q", "cam-1", {"ok": 0.9, "bruise": 0.04, "rot": 0.03, "scab": 0.03}),
        "unsure": helpers.frame_event("line-q", "cam-1", {"ok": 0.4, "bruise": 0.38, "rot": 0.12, "scab": 0.1}),
        "middle": helpers.frame_event("line-q", "cam-1", {"ok": 0.6, "bruise": 0.3, "rot": 0.05, "scab": 0.05}),
        "drifting": helpers.frame_event("line-q", "cam-2", {"ok": 0.85, "bruise": 0.1, "rot": 0.03, "scab": 0.02}),
    }
    for msg in frames.values():
        await ingest_into(c, msg)
    now = datetime.now(UTC)
    with labeling_db.session() as s:
        order = [r.row.frame_id for r in queue.rank(
            [state.frame(s, m.frame_id) for m in frames.values()], [], {}, {}, c)]
    assert order == [frames[k].frame_id for k in ("unsure", "middle", "drifting", "sure")]

    async with labeling_db.write() as s:
        s.execute(state.drifts.insert().values(
            drift_id="d-1", line_id="line-q", camera_id="cam-2", model_name="", model_version="",
            since=now - timedelta(hours=1), active_until=now + timedelta(hours=1),
        ))
    async with labeling_db.write() as s:
        leased = queue.next_tasks(s, c, "alice", "line-q", 4, datetime.now(UTC))
    assert [r.row.frame_id for r, _, _ in leased] == [frames[k].frame_id for k in ("drifting", "unsure", "middle", "sure")]
    assert "drift:d-1" in leased[0][0].why


async def test_a_canarys_frames_come_first(labeling_db, ingest_into, helpers):
    """The registry holds a canary until its frames have labels: they go to the head of the queue,
    before more unsure frames production scored."""
    c = cfg(auto_accept_threshold=1.1, weight_class_balance=0.0, weight_camera_diversity=0.0)
    unsure = {"ok": 0.4, "bruise": 0.38, "rot": 0.12, "scab": 0.1}
    sure = {"ok": 0.9, "bruise": 0.04, "rot": 0.03, "scab": 0.03}
    for _ in range(3):
        await ingest_into(c, helpers.frame_event("line-c", "cam-1", unsure, model_version="2"))
    production = helpers.frame_event("line-c", "cam-1", sure, model_version="2")
    canary = helpers.frame_event("line-c", "cam-1", sure, model_version="3", canary=True)
    for msg in (production, canary):
        await ingest_into(c, msg)
    async with labeling_db.write() as s:
        leased = queue.next_tasks(s, c, "alice", "line-c", 2, datetime.now(UTC))
    assert leased[0][0].row.frame_id == canary.frame_id and "canary" in leased[0][0].why
    assert production.frame_id not in {r.row.frame_id for r, _, _ in leased}


async def test_frames_without_prediction_are_sampled_uniformly(labeling_db, ingest_into, helpers):
    c = cfg()
    msgs = [helpers.frame_event("line-u", "cam-1", None) for _ in range(40)]
    for msg in msgs:
        await ingest_into(c, msg)
    with labeling_db.session() as s:
        rows = [state.frame(s, m.frame_id) for m in msgs]
    assert {r.score_kind for r in rows} == {"uniform"}
    scores = sorted(r.base_score for r in rows)
    # A uniform draw per frame, stable (from the id), spread over [0, 1).
    assert scores == sorted(queue.uniform_draw(m.frame_id) for m in msgs)
    assert scores[0] < 0.25 and scores[-1] > 0.75


def _lease_in_thread(db: Database, c, annotator: str, barrier: threading.Barrier, out: dict) -> None:
    barrier.wait()
    with db.transaction() as s:
        out[annotator] = [r.row.frame_id for r, _, _ in queue.next_tasks(s, c, annotator, "line-l", 6, datetime.now(UTC))]


async def test_two_replicas_never_lease_the_same_frame(labeling_db, ingest_into, helpers):
    c = cfg()
    msgs = [helpers.frame_event("line-l", f"cam-{i % 3}", {"ok": 0.5 + i / 100, "rot": 0.5 - i / 100})
            for i in range(10)]
    for msg in msgs:
        await ingest_into(c, msg)
    # Two "replicas": separate engines on one database, leasing at the same moment.
    replica = Database(labeling_db.url)
    try:
        barrier, out = threading.Barrier(2), {}
        threads = [
            threading.Thread(target=_lease_in_thread, args=(db, c, who, barrier, out))
            for db, who in ((labeling_db, "alice"), (replica, "bob"))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        replica.dispose()
    assert not set(out["alice"]) & set(out["bob"])
    assert len(out["alice"]) + len(out["bob"]) == 10
    with labeling_db.session() as s:
        assert s.execute(select(func.count()).select_from(state.leases)).scalar_one() == 10


async def test_expired_lease_is_refused_and_frame_goes_to_someone_else(labeling_db, ingest_into, helpers):
    c = cfg(lease_s=60)
    msg = helpers.frame_event("line-e", "cam-1", {"ok": 0.5, "rot": 0.5})
    await ingest_into(c, msg)
    t0 = datetime.now(UTC)
    async with labeling_db.write() as s:
        [(_, lease_a, _)] = queue.next_tasks(s, c, "alice", "line-e", 5, t0)
    async with labeling_db.write() as s:
        assert queue.next_tasks(s, c, "bob", "line-e", 5, t0 + timedelta(seconds=30)) == []
    later = t0 + timedelta(seconds=61)
    with pytest.raises(LabelRejected) as err:
        async with labeling_db.write() as s:
            submit(s, msg.frame_id, "rot", "alice", lease_a, now=later)
    assert (err.value.code, err.value.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "LEASE_EXPIRED")
    async with labeling_db.write() as s:
        [(_, lease_b, _)] = queue.next_tasks(s, c, "bob", "line-e", 5, later)
        label, duplicate = submit(s, msg.frame_id, "rot", "bob", lease_b, now=later)
    assert not duplicate and label.annotator == "bob"
    with labeling_db.session() as s:
        assert [h.annotator for h in state.label_history(s, msg.frame_id)] == ["bob"]


async def test_bad_submissions_are_specific_and_store_nothing(labeling_db, ingest_into, helpers):
    c = cfg()
    msg = helpers.frame_event("line-b", "cam-1", {"ok": 0.5, "rot": 0.5})
    other = helpers.frame_event("line-b", "cam-1", {"ok": 0.5, "rot": 0.5})
    await ingest_into(c, msg)
    await ingest_into(c, other)
    now = datetime.now(UTC)
    async with labeling_db.write() as s:
        leased = {r.row.frame_id: lease for r, lease, _ in queue.next_tasks(s, c, "alice", "line-b", 2, now)}
    lease = leased[msg.frame_id]
    cases = [
        (dict(frame_id="nope", label_class="rot", annotator="alice"), grpc.StatusCode.NOT_FOUND, "UNKNOWN_FRAME"),
        (dict(frame_id=msg.frame_id, label_class="mould", annotator="alice"), grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_CLASS"),
        (dict(frame_id=msg.frame_id, label_class="rot", annotator=""), grpc.StatusCode.INVALID_ARGUMENT, "MISSING_ANNOTATOR"),
        (dict(frame_id=msg.frame_id, label_class="rot", annotator="alice", lease_id="zzz"), grpc.StatusCode.NOT_FOUND, "UNKNOWN_LEASE"),
        (dict(frame_id=msg.frame_id, label_class="rot", annotator="bob", lease_id=lease), grpc.StatusCode.PERMISSION_DENIED, "LEASE_NOT_YOURS"),
        (dict(frame_id=other.frame_id, label_class="rot", annotator="alice", lease_id=lease), grpc.StatusCode.INVALID_ARGUMENT, "LEASE_FRAME_MISMATCH"),
    ]
    for kwargs, code, reason in cases:
        with pytest.raises(LabelRejected) as err:
            async with labeling_db.write() as s:
                submit(s, **kwargs)
        assert (err.value.code, err.value.reason) == (code, reason), kwargs
    with labeling_db.session() as s:
        assert s.execute(select(func.count()).select_from(state.labels)).scalar_one() == 0
        assert outbox.pending(labeling_db) == 0

    async with labeling_db.write() as s:
        first, dup = submit(s, msg.frame_id, "rot", "alice", lease, note="soft spot")
    async with labeling_db.write() as s:
        again, dup_again = submit(s, msg.frame_id, "rot", "alice", lease, note="soft spot")
    assert (dup, dup_again, again.label_id) == (False, True, first.label_id)
    with pytest.raises(LabelRejected) as err:
        async with labeling_db.write() as s:
            submit(s, msg.frame_id, "ok", "alice", lease)
    assert err.value.reason == "LEASE_ALREADY_USED"
    with labeling_db.session() as s:
        assert len(state.label_history(s, msg.frame_id)) == 1
    assert outbox.pending(labeling_db) == 1  # one labels.created.v1, for the one accepted label


async def test_model_labels_are_marked_and_the_latest_human_label_wins(labeling_db, ingest_into, helpers):
    c = cfg(auto_accept_threshold=0.95)
    msg = helpers.frame_event("line-h", "cam-1", {"ok": 0.97, "bruise": 0.01, "rot": 0.01, "scab": 0.01})
    unsure = helpers.frame_event("line-h", "cam-1", {"ok": 0.6, "bruise": 0.4})
    await ingest_into(c, msg)
    await ingest_into(c, unsure)
    with labeling_db.session() as s:
        [model_label] = state.label_history(s, msg.frame_id)
        assert state.label_history(s, unsure.frame_id) == []
    assert model_label.source == LabelSource.LABEL_SOURCE_MODEL
    assert model_label.annotator == "model:apples@3" and model_label.prediction.scores["ok"] == pytest.approx(0.97)
    async with labeling_db.write() as s:
        submit(s, msg.frame_id, "bruise", "alice")
    async with labeling_db.write() as s:
        submit(s, msg.frame_id, "scab", "bob")
    with labeling_db.session() as s:
        history = state.label_history(s, msg.frame_id)
        assert [h.label_class for h in history] == ["ok", "bruise", "scab"]
        assert state.effective(history).label_class == "scab"
        # A human-labelled frame leaves the review queue.
        assert not state.frame(s, msg.frame_id).in_queue


def test_split_shares_follow_the_settings():
    import hashlib

    shas = [hashlib.sha256(f"frame-{i}".encode()).hexdigest() for i in range(4000)]
    splits = [split_of(sha, 0.1, 0.2) for sha in shas]
    share = {name: splits.count(name) / len(splits) for name in ("train", "val", "test")}
    assert share["train"] == pytest.approx(0.7, abs=0.03)
    assert share["val"] == pytest.approx(0.1, abs=0.02)
    assert share["test"] == pytest.approx(0.2, abs=0.02)


async def test_manifest_is_reproducible_and_test_split_is_human_only(labeling_db, ingest_into, helpers):
    c = cfg(auto_accept_threshold=0.9)
    # Fixed ids, so fixed splits: some human-labelled and some model-labelled frames fall in test.
    msgs = [helpers.frame_event("line-m", f"cam-{i % 2}", {"ok": 0.95, "rot": 0.05}, frame_id=f"m-{i}")
            for i in range(60)]
    for msg in msgs:
        await ingest_into(c, msg)
    async with labeling_db.write() as s:
        for msg in msgs[:20]:
            submit(s, msg.frame_id, "rot", "alice")
    with labeling_db.session() as s:
        entries = state.effective_labels(s, "line-m", state.max_label_seq(s))
    first = datasets.build_manifest(entries, c)
    again = datasets.build_manifest(list(reversed(entries)), c)
    assert first.data == again.data and first.sha256 == again.sha256
    rows = [json.loads(line) for line in first.data.splitlines()]
    test_rows = [r for r in rows if r["split"] == "test"]
    assert test_rows and all(r["label_source"] == "human" for r in test_rows)
    model_in_test = [m for m in msgs[20:] if split_of(m.image.sha256, c.split_val, c.split_test) == "test"]
    assert model_in_test, "the sample should put some model-labelled frames in the test split"
    assert not {m.frame_id for m in model_in_test} & {r["frame_id"] for r in rows}
    assert sum(first.split_counts.values()) == len(rows) == 60 - len(model_in_test)
