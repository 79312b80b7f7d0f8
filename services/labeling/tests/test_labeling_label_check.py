"""The label check before a cut, on the real database (SQLite, PostgreSQL) and S3 store: suspects go
back to the queue for a second reviewer, the cut waits for them, and the version records their fate."""

from __future__ import annotations

import asyncio
import math
import random
import uuid
from datetime import UTC, datetime

import pytest

from lineloop.bus import Bus, outbox
from lineloop.cli import datasets as cli_datasets
from lineloop.labeling import labels, queue, state
from lineloop.labeling.datasets import CutHeld, Datasets
from lineloop.labeling.settings import LabelingSettings
from lineloop.labeling.splits import split_of
from lineloop.storage.objects import ObjectStore
from lineloop.v1.events_pb2 import SuspectFate

CLASSES = ["ok", "bruise", "rot", "scab"]


async def submit(db, frame_id, cls, annotator, lease_id=""):
    async with db.write() as s:
        labels.submit(s, frame_id=frame_id, label_class=cls, annotator=annotator, note="", lease_id=lease_id,
                      classes=CLASSES, now=datetime.now(UTC), emit=lambda msg: outbox.add(s, msg, source="test"))


def scored(rng: random.Random, truth: str) -> dict[str, float]:
    """Scores of a model right about 95 % of the time (a seeded draw)."""
    logits = {c: rng.gauss(0, 1) + (3.5 if c == truth else 0.0) for c in CLASSES}
    total = sum(math.exp(v) for v in logits.values())
    return {c: math.exp(v) / total for c, v in logits.items()}


def parts(stack, labeling_db, **overrides):
    cfg = LabelingSettings(database_url="sqlite://", auto_accept_threshold=1.1, **overrides)
    objects = ObjectStore.from_url(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key)
    return cfg, objects, Datasets(cfg, labeling_db, Bus(stack.kafka_bootstrap, source="lineloop/labeling", db=labeling_db), objects)


async def test_suspects_get_a_second_reviewer_and_the_version_records_their_fate(
        stack, labeling_db, ingest_into, helpers, monkeypatch):
    line = f"line-{uuid.uuid4().hex[:6]}"
    # Half the frames in the test split, so some suspects are there; a short wait for reviews.
    cfg, objects, datasets = parts(stack, labeling_db, split_test=0.5, label_check_timeout_s=2.0)
    rng = random.Random(7)
    truth, sha, wrong = {}, {}, set()
    for i in range(240):
        cls = CLASSES[i % 4]
        msg = helpers.frame_event(line, f"cam-{i % 3}", scored(rng, cls))
        await ingest_into(cfg, msg)
        truth[msg.frame_id], sha[msg.frame_id] = cls, msg.image.sha256
        given = cls
        if rng.random() < 0.05:
            given = rng.choice([c for c in CLASSES if c != cls])
            wrong.add(msg.frame_id)
        await submit(labeling_db, msg.frame_id, given, "alice")

    with pytest.raises(CutHeld, match="flagged as likely wrong went back to the review queue"):
        await datasets.cut(line, line, requested_by="test", reason="")
    with labeling_db.session() as s:
        flagged = {r.frame_id: r for r in s.execute(state.label_suspects.select()).all() if r.line_id == line}
    assert flagged and len(set(flagged) & wrong) >= 0.6 * len(flagged), (len(flagged), len(set(flagged) & wrong))
    with pytest.raises(CutHeld, match="wait for a second reviewer"):   # nothing reviewed yet
        await datasets.cut(line, line, requested_by="test", reason="")
    assert await datasets.apply_policy() == []                          # the policy waits too

    async with labeling_db.write() as s:
        # The author of the flagged labels is not asked again; someone else gets them first.
        assert not {r.row.frame_id for r, _, _ in queue.next_tasks(s, cfg, "alice", line, 50, datetime.now(UTC))} & set(flagged)
    async with labeling_db.write() as s:
        leased = queue.next_tasks(s, cfg, "bob", line, len(flagged), datetime.now(UTC))
    assert {r.row.frame_id for r, _, _ in leased} == set(flagged)
    assert all("second-review" in r.why for r, _, _ in leased)

    # bob answers with the truth, except one test-split frame he never gets to.
    left = next(f for f in sorted(flagged) if split_of(sha[f], cfg.split_val, cfg.split_test) == "test")
    for ranked, lease_id, _ in leased:
        if ranked.row.frame_id != left:
            await submit(labeling_db, ranked.row.frame_id, truth[ranked.row.frame_id], "bob", lease_id)

    deadline = asyncio.get_running_loop().time() + 30
    while not (cut := await datasets.apply_policy()):  # the unreviewed one holds it until its wait runs out
        assert asyncio.get_running_loop().time() < deadline, "the policy never cut"
        await asyncio.sleep(0.5)
    [version] = cut
    # alice's 240 labels and bob's second reviews
    assert version.reason == f"policy: {240 + len(flagged) - 1} new human labels >= 200"
    assert version.label_check.checked and version.label_check.frames_checked == 240
    fates = {x.frame_id: x for x in version.label_check.suspects}
    # Re-estimated with bob's answers, the check may flag a few more; they waited their turn too.
    assert set(flagged) <= set(fates)
    pending = {f for f, x in fates.items() if x.fate == SuspectFate.SUSPECT_FATE_PENDING}
    assert pending == {left} | (set(fates) - set(flagged))
    for frame_id in set(flagged) - {left}:
        x = fates[frame_id]
        expected = SuspectFate.SUSPECT_FATE_CORRECTED if frame_id in wrong else SuspectFate.SUSPECT_FATE_CONFIRMED
        assert (x.fate, x.reviewed_by, x.final_class, x.annotator) == (expected, "bob", truth[frame_id], "alice")
        assert x.flagged_in == "v0001"

    manifest = objects.get_bytes(version.manifest.bucket, version.manifest.key, expected_sha256=version.manifest.sha256)
    in_manifest = {line_.split(b'"frame_id":"')[1].split(b'"')[0].decode() for line_ in manifest.splitlines()}
    held_out = {f for f in pending if split_of(sha[f], cfg.split_val, cfg.split_test) == "test"}
    assert left in held_out and not held_out & in_manifest   # unresolved, in the test split: kept out
    assert in_manifest == set(truth) - held_out              # reviewed ones are in, corrected where wrong

    # `lineloop datasets show` on this version: the suspects and their fate.
    shown = cli_datasets._summary(version)["label_check"]
    assert shown["checked"] and {x["frame_id"]: x["fate"] for x in shown["suspects"]} == {
        f: "pending" if f in pending else "corrected" if f in wrong else "confirmed" for f in fates}
    monkeypatch.setattr(cli_datasets.console, "width", 200)  # frame ids in full
    with cli_datasets.console.capture() as captured:
        cli_datasets._show_label_check(version)
    text = " ".join(captured.get().split())  # rich wraps at the terminal's width
    assert f"{len(fates)} suspects listed" in text and f"{len(pending)} pending" in text and left in text


async def test_without_out_of_sample_predictions_the_version_says_not_checked(stack, labeling_db, ingest_into, helpers):
    line = f"line-{uuid.uuid4().hex[:6]}"
    cfg, _, datasets = parts(stack, labeling_db)
    frames = [helpers.frame_event(line, "cam-1", None) for _ in range(5)]  # no model deployed yet
    for msg in frames:
        await ingest_into(cfg, msg)
        await submit(labeling_db, msg.frame_id, "rot", "alice")
    version, new = await datasets.cut(line, line, requested_by="test", reason="")
    assert new and not version.label_check.checked and not version.label_check.suspects
    assert version.label_check.not_checked.startswith("no usable out-of-fold predictions")
    assert version.label_check.frames_unchecked == 5
    with cli_datasets.console.capture() as captured:
        cli_datasets._show_label_check(version)
    assert "not checked: no usable out-of-fold predictions: 0 labelled frames" in " ".join(captured.get().split())


def test_a_check_that_breaks_is_recorded_as_not_run(monkeypatch):
    """cleanlab raising must neither block cuts forever nor leave a version claiming a check."""
    from types import SimpleNamespace

    from lineloop.labeling import datasets as datasets_module
    from lineloop.v1.common_pb2 import Prediction, PredictionStatus
    from lineloop.v1.events_pb2 import LabelCreated, LabelSource

    def broken(*args, **kwargs):
        raise RuntimeError("cleanlab broke")

    monkeypatch.setattr(datasets_module, "flag_label_issues", broken)
    pred = Prediction(status=PredictionStatus.PREDICTION_STATUS_OK, scores={"ok": 0.9, "rot": 0.1}).SerializeToString()
    entries = [(SimpleNamespace(frame_id=f"f{i}", sha256=f"{i:064x}", prediction=pred),
                LabelCreated(frame_id=f"f{i}", label_class="ok", source=LabelSource.LABEL_SOURCE_HUMAN)) for i in range(3)]
    checked = datasets_module.check_labels(entries, LabelingSettings(database_url="sqlite://"), set(), set())
    assert not checked.check.checked and checked.new == []
    assert checked.check.not_checked == "the check failed: RuntimeError: cleanlab broke"
