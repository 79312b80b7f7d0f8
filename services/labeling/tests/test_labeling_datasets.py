"""The dataset-cut policy and cut claims on the real database (SQLite, PostgreSQL) and S3 store."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from lineloop.bus import Bus, outbox
from lineloop.bus.bus import EventContext
from lineloop.bus.cloudevents import Envelope
from lineloop.contracts.catalogue import bucket
from lineloop.labeling import handlers_models_promoted, handlers_models_registered, labels, queue, state
from lineloop.labeling.datasets import CutBusy, Datasets
from lineloop.labeling.settings import LabelingSettings
from lineloop.labeling.splits import split_of
from lineloop.model.dataset import DatasetSplits
from lineloop.storage.objects import ObjectNotFound, ObjectStore
from lineloop.v1.common_pb2 import STAGE_CANDIDATE, STAGE_PRODUCTION
from lineloop.v1.events_pb2 import DatasetVersioned, GateCheck, GateDecision, GateOutcome, ModelPromoted, ModelRegistered


def events(db) -> list[DatasetVersioned]:
    with db.session() as s:
        rows = s.execute(outbox.outbox.select().where(outbox.outbox.c.topic == "datasets.versioned.v1")
                         .order_by(outbox.outbox.c.id)).all()
    return [DatasetVersioned.FromString(r.value) for r in rows]


async def label(db, frame_ids, cls="rot"):
    async with db.write() as s:
        for frame_id in frame_ids:
            labels.submit(s, frame_id=frame_id, label_class=cls, annotator="alice", note="", lease_id="",
                          classes=["ok", "bruise", "rot", "scab"], now=datetime.now(UTC),
                          emit=lambda msg: outbox.add(s, msg, source="test"))


async def test_policy_cuts_on_count_lower_count_under_drift_and_schedule(stack, labeling_db, ingest_into, helpers):
    line = f"line-{uuid.uuid4().hex[:6]}"
    cfg = LabelingSettings(database_url="sqlite://", cut_min_labels=5, cut_min_labels_drift=3,
                           auto_accept_threshold=1.1)
    objects = ObjectStore.from_url(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key)
    bus = Bus(stack.kafka_bootstrap, source="lineloop/labeling", db=labeling_db)  # outbox only; not started
    policy = Datasets(cfg, labeling_db, bus, objects)
    frames = [helpers.frame_event(line, "cam-1", {"ok": 0.5, "rot": 0.5}) for _ in range(12)]
    for msg in frames:
        await ingest_into(cfg, msg)

    await label(labeling_db, [m.frame_id for m in frames[:4]])
    assert await policy.apply_policy() == []                       # 4 < 5
    await label(labeling_db, [frames[4].frame_id])
    [v1] = await policy.apply_policy()                              # 5 >= 5
    assert (v1.dataset, v1.version, v1.created_by) == (line, "v0001", "labeling-policy")
    assert v1.reason == "policy: 5 new human labels >= 5"
    assert await policy.apply_policy() == []                       # nothing new since v0001

    await label(labeling_db, [m.frame_id for m in frames[5:8]])
    assert await policy.apply_policy() == []                       # 3 < 5 without drift
    now = datetime.now(UTC)
    async with labeling_db.write() as s:
        s.execute(state.drifts.insert().values(
            drift_id=f"d-{line}", line_id=line, camera_id="", model_name="", model_version="",
            since=now - timedelta(minutes=5), active_until=now + timedelta(minutes=5)))
    [v2] = await policy.apply_policy()                              # 3 >= 3 while drift is active
    assert (v2.version, v2.parent_version, v2.reason) == ("v0002", "v0001", "policy: 3 new human labels >= 3 (drift active)")

    await label(labeling_db, [frames[8].frame_id])
    assert await policy.apply_policy() == []
    scheduled = Datasets(cfg.model_copy(update={"cut_schedule_s": 0.001}), labeling_db, bus, objects)
    [v3] = await scheduled.apply_policy()
    assert v3.version == "v0003" and v3.reason.startswith("schedule:")
    assert [e.version for e in events(labeling_db)] == ["v0001", "v0002", "v0003"]
    assert sum(v3.split_counts.values()) == 9
    manifest = objects.get_bytes(v3.manifest.bucket, v3.manifest.key, expected_sha256=v3.manifest.sha256)
    assert len(manifest.splitlines()) == 9


async def test_a_dataset_is_cut_by_one_claimant_at_a_time(stack, labeling_db, ingest_into, helpers):
    line = f"line-{uuid.uuid4().hex[:6]}"
    cfg = LabelingSettings(database_url="sqlite://", auto_accept_threshold=1.1)
    objects = ObjectStore.from_url(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key)
    datasets = Datasets(cfg, labeling_db, Bus(stack.kafka_bootstrap, source="lineloop/labeling", db=labeling_db), objects)
    msg = helpers.frame_event(line, "cam-1", {"ok": 0.5, "rot": 0.5})
    await ingest_into(cfg, msg)
    await label(labeling_db, [msg.frame_id])
    now = datetime.now(UTC)
    async with labeling_db.write() as s:
        assert state.claim_dataset(s, line, "other-replica", now, now + timedelta(minutes=1))
    with pytest.raises(CutBusy):
        await datasets.cut(line, line, requested_by="test", reason="")
    assert events(labeling_db) == []
    async with labeling_db.write() as s:
        assert state.release_dataset(s, line, "other-replica")
    version, new = await datasets.cut(line, line, requested_by="test", reason="")
    assert new and version.version == "v0001" and len(events(labeling_db)) == 1


async def test_a_version_in_another_datasets_bucket_is_read_through_the_events_reference(
        stack, labeling_db, ingest_into, helpers, monkeypatch):
    """LINELOOP_LABELING_DATASETS_BUCKET moves the manifests; training, the gate and the compiler read them
    with `DatasetSplits` from the event's reference, so they follow without a setting of their own."""
    line = f"line-{uuid.uuid4().hex[:6]}"
    moved = f"{bucket('datasets')}-moved"
    monkeypatch.setenv("LINELOOP_LABELING_DATASETS_BUCKET", moved)
    cfg = LabelingSettings(database_url="sqlite://", auto_accept_threshold=1.1)
    assert cfg.datasets_bucket == moved
    objects = ObjectStore.from_url(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key)
    objects.ensure_buckets([moved])
    datasets = Datasets(cfg, labeling_db, Bus(stack.kafka_bootstrap, source="lineloop/labeling", db=labeling_db), objects)
    frames = [helpers.frame_event(line, "cam-1", {"ok": 0.5, "rot": 0.5}) for _ in range(3)]
    for msg in frames:
        await ingest_into(cfg, msg)
    await label(labeling_db, [m.frame_id for m in frames])
    version, new = await datasets.cut(line, line, requested_by="test", reason="")
    assert new and version.manifest.bucket == moved
    splits = DatasetSplits.read(objects, version.manifest)
    assert sorted(e.frame_id for e in splits.entries) == sorted(m.frame_id for m in frames)
    with pytest.raises(ObjectNotFound):  # nothing where a consumer rebuilding the catalogue's location would look
        objects.get_bytes(bucket("datasets"), version.manifest.key)


def registered(line: str, version: str, outcome: int, lacking: dict[str, int], at: datetime) -> ModelRegistered:
    """models.registered.v1 as the registry's gate publishes it; `lacking`: {class: more frames needed}."""
    msg = ModelRegistered(model_name="apples", version=version, dataset=line, gate=GateDecision(outcome=outcome, checks=[
        GateCheck(name=f"recall:{cls}" if cls else "accuracy", outcome=GateOutcome.GATE_OUTCOME_NOT_ENOUGH_EVIDENCE,
                  more_frames_needed=n, lacking_class=cls) for cls, n in lacking.items()]))
    msg.registered_at.FromDatetime(at)
    return msg


async def consume(db, msg: ModelRegistered) -> None:
    """The real models.registered.v1 handler in a real transaction, as the bus runs it."""
    env = Envelope(uuid.uuid4().hex, "test", "lineloop.v1.ModelRegistered", None, "application/x-protobuf", {})
    async with db.write() as s:
        await handlers_models_registered.on_model_registered(
            msg, EventContext(env, "models.registered.v1", 0, 0, "lineloop/labeling", session=s))


async def test_a_held_candidates_missing_test_frames_are_asked_for_then_cut(stack, labeling_db, ingest_into, helpers):
    """The gate held v2: too few labelled test frames of rot. Labeling puts rot-looking frames of
    the test split first (a more uncertain frame of the train split waits), cuts a version once
    that many are labelled, once; a decided newer candidate settles the request, an older
    decision delivered late does not."""
    line = f"line-{uuid.uuid4().hex[:6]}"
    cfg = LabelingSettings(database_url="sqlite://", cut_min_labels=1000, auto_accept_threshold=1.1,
                           weight_class_balance=0.0, weight_camera_diversity=0.0)
    objects = ObjectStore.from_url(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key)
    policy = Datasets(cfg, labeling_db, Bus(stack.kafka_bootstrap, source="lineloop/labeling", db=labeling_db), objects)

    def frames_in(split: str, n: int, scores: dict[str, float]):
        found = []
        while len(found) < n:
            msg = helpers.frame_event(line, "cam-1", scores)
            if split_of(msg.image.sha256, cfg.split_val, cfg.split_test) == split:
                found.append(msg)
        return found

    rot_test = frames_in("test", 3, {"ok": 0.2, "rot": 0.8})
    [unsure_train] = frames_in("train", 1, {"ok": 0.5, "rot": 0.5})
    [ok_test] = frames_in("test", 1, {"ok": 0.8, "rot": 0.2})
    for msg in [*rot_test, unsure_train, ok_test]:
        await ingest_into(cfg, msg)
    await label(labeling_db, [ok_test.frame_id], "ok")
    [v1] = await (Datasets(cfg.model_copy(update={"cut_min_labels": 1}), labeling_db, policy.bus, objects)
                  .apply_policy())

    asked = datetime.now(UTC)
    await consume(labeling_db, registered(line, "2", GateOutcome.GATE_OUTCOME_NOT_ENOUGH_EVIDENCE, {"rot": 2}, asked))
    async with labeling_db.write() as s:
        leased = queue.next_tasks(s, cfg, "alice", line, 4, datetime.now(UTC))
        assert [w["wanted"] for w in state.wanted_evidence(s, line)] == [{"rot": 2}]
    assert {r.row.frame_id for r, _, _ in leased[:3]} == {m.frame_id for m in rot_test}
    assert all("evidence:rot" in r.why for r, _, _ in leased[:3]) and leased[3][0].row.frame_id == unsure_train.frame_id
    assert "evidence" not in leased[3][0].why

    await label(labeling_db, [unsure_train.frame_id, rot_test[0].frame_id], "rot")
    assert await policy.apply_policy() == []                      # 1 of the 2 rot test frames
    await label(labeling_db, [rot_test[1].frame_id], "rot")
    [v2] = await policy.apply_policy()
    assert (v2.parent_version, v2.reason) == (v1.version, "evidence: the test frames apples v2's gate lacked are "
                                                          "labelled (rot 2/2)")
    await label(labeling_db, [rot_test[2].frame_id], "rot")
    assert await policy.apply_policy() == []                      # answered by v2: one request, one cut

    # A late, older decision does not replace the newer request; the newer candidate's pass settles it.
    await consume(labeling_db, registered(line, "1", GateOutcome.GATE_OUTCOME_NOT_ENOUGH_EVIDENCE, {"ok": 9},
                                          asked - timedelta(minutes=1)))
    with labeling_db.session() as s:
        assert [(w["model_version"], w["wanted"]) for w in state.wanted_evidence(s, line)] == [("2", {"rot": 2})]
    await consume(labeling_db, registered(line, "3", GateOutcome.GATE_OUTCOME_PASSED, {}, asked + timedelta(minutes=1)))
    with labeling_db.session() as s:
        assert state.wanted_evidence(s, line) == []


async def test_a_held_candidate_a_person_moves_on_asks_for_nothing_more(labeling_db):
    """The release manager promoted the held v2: the labels it asked for would only cut a version
    for a question already answered. Moving it to candidate (no decision) keeps the request."""
    line = f"line-{uuid.uuid4().hex[:6]}"
    await consume(labeling_db, registered(line, "2", GateOutcome.GATE_OUTCOME_NOT_ENOUGH_EVIDENCE, {"rot": 2},
                                          datetime.now(UTC)))

    async def promoted(stage: int) -> None:
        env = Envelope(uuid.uuid4().hex, "test", "lineloop.v1.ModelPromoted", None, "application/x-protobuf", {})
        async with labeling_db.write() as s:
            await handlers_models_promoted.on_model_promoted(
                ModelPromoted(model_name="apples", version="2", stage=stage),
                EventContext(env, "models.promoted.v1", 0, 0, "lineloop/labeling", session=s))

    await promoted(STAGE_CANDIDATE)
    with labeling_db.session() as s:
        assert [w["model_version"] for w in state.wanted_evidence(s, line)] == ["2"]
    await promoted(STAGE_PRODUCTION)
    with labeling_db.session() as s:
        assert state.wanted_evidence(s, line) == []
