"""The labeling service on the real stack: broker, S3 store, SQLite/PostgreSQL, gRPC."""

from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from lineloop.bus import Bus
from lineloop.contracts.topics import event_type
from lineloop.labeling import queue, state
from lineloop.model.manifest import parse_manifest
from lineloop.runtime import error_info
from lineloop.storage.objects import ObjectStore
from lineloop.v1 import labeling_pb2 as pb
from lineloop.v1.events_pb2 import DatasetVersioned, DriftDetected, FrameIngested, LabelCreated, LabelSource

SURE = {"ok": 0.99, "bruise": 0.004, "rot": 0.003, "scab": 0.003}


@pytest.fixture(scope="module")
async def publisher(stack):
    bus = Bus(stack.kafka_bootstrap, source="lineloop/test-ingest")
    await bus.start()
    yield bus
    await bus.stop()


@pytest.fixture(scope="module")
def objects(stack) -> ObjectStore:
    return ObjectStore.from_url(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key)


@pytest.fixture(scope="module")
async def labeling(stack, tmp_path_factory, helpers):
    """One service (SQLite) shared by this module's tests; each test uses its own line ids."""
    db = tmp_path_factory.mktemp("labeling") / "labeling.db"
    cfg = helpers.service_settings(
        stack, f"sqlite:///{db}", metrics_port=0, cut_min_labels=50, cut_min_labels_drift=6,
        auto_accept_threshold=0.98,
    )
    async with helpers.running_labeling(cfg) as (service, stub):
        yield service, stub


async def publish_frames(publisher: Bus, frames: list[FrameIngested]) -> None:
    for msg in frames:
        await publisher.publish(msg)


async def read_events(bootstrap: str, message_type, match, want: int, timeout_s: float = 60.0) -> list:
    """Events of `message_type` on the real broker for which `match(msg)` holds, until `want` were seen."""
    topic = event_type(message_type).topic
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    found = []
    try:
        parts = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or await _partitions(consumer, topic))]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while len(found) < want and asyncio.get_running_loop().time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    msg = message_type.FromString(record.value)
                    if match(msg):
                        found.append(msg)
    finally:
        await consumer.stop()
    return found


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()  # the topic may have been created after start
    return consumer.partitions_for_topic(topic) or set()


async def wait_for(predicate, timeout_s: float = 30.0, interval_s: float = 0.2):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval_s)


def rpc_error(call_result: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, str, str]:
    info = error_info(call_result)
    return call_result.code(), info.reason if info else "", call_result.details()


async def test_frames_to_queue_to_labels_to_policy_cut(stack, publisher, objects, labeling, helpers):
    """frames.ingested.v1 on the broker -> ranked, leased queue -> labels -> policy cut -> event + manifest."""
    service, stub = labeling
    h = helpers
    line = f"line-{uuid.uuid4().hex[:6]}"
    frames = {
        "sure": h.frame_event(line, "cam-1", SURE),                                         # auto-accepted
        "unsure": h.frame_event(line, "cam-1", {"ok": 0.35, "bruise": 0.33, "rot": 0.2, "scab": 0.12}),
        "middle": h.frame_event(line, "cam-1", {"ok": 0.7, "bruise": 0.2, "rot": 0.05, "scab": 0.05}),
        "calm": h.frame_event(line, "cam-1", {"ok": 0.9, "bruise": 0.06, "rot": 0.02, "scab": 0.02}),
        "drifting": h.frame_event(line, "cam-2", {"ok": 0.9, "bruise": 0.06, "rot": 0.02, "scab": 0.02}),
        # Uniformly sampled: an id whose draw is low, so it ranks below the uncertain ones.
        "no-model": h.frame_event(line, "cam-3", None, frame_id=next(
            f for f in (f"nm-{line}-{k}" for k in range(1000)) if queue.uniform_draw(f) < 0.2)),
    }
    await publish_frames(publisher, list(frames.values()))
    drift = DriftDetected(drift_id=f"drift-{uuid.uuid4().hex[:6]}", line_id=line, camera_id="cam-2",
                          model_name="apples", model_version="3", feature="brightness_mean", score=0.4, threshold=0.2)
    drift.current.start.FromDatetime(datetime.now(UTC) - timedelta(minutes=5))
    drift.detected_at.FromDatetime(datetime.now(UTC))
    await publisher.publish(drift)
    await h.wait_known(stub, [m.frame_id for m in frames.values()])

    def drift_seen():
        with service.db.session() as s:
            return state.active_drifts(s, line, datetime.now(UTC))
    await wait_for(drift_seen)

    alice = (await stub.NextTasks(pb.NextTasksRequest(annotator="alice", line_id=line, max_tasks=3))).tasks
    names = {m.frame_id: k for k, m in frames.items()}
    assert [names[t.frame_id] for t in alice] == ["drifting", "unsure", "middle"]
    assert [t.priority for t in alice] == sorted((t.priority for t in alice), reverse=True)
    assert drift.drift_id in alice[0].why and alice[0].image_url.startswith("http")
    bob = (await stub.NextTasks(pb.NextTasksRequest(annotator="bob", line_id=line, max_tasks=10))).tasks
    assert {names[t.frame_id] for t in bob} == {"calm", "sure", "no-model"}  # nothing of alice's
    assert (await stub.NextTasks(pb.NextTasksRequest(annotator="carol", line_id=line, max_tasks=10))).tasks == []

    truth = {"drifting": "bruise", "unsure": "rot", "middle": "ok", "calm": "ok", "sure": "ok", "no-model": "scab"}
    for who, tasks in (("alice", alice), ("bob", bob)):
        for t in tasks:
            reply = await stub.SubmitLabel(pb.SubmitLabelRequest(
                lease_id=t.lease_id, frame_id=t.frame_id, label_class=truth[names[t.frame_id]], annotator=who))
            assert not reply.duplicate and reply.label.source == LabelSource.LABEL_SOURCE_HUMAN

    # Drift is active on this line, so its lower threshold (6, not 50) applies.
    [version] = await read_events(stack.kafka_bootstrap, DatasetVersioned, lambda v: v.dataset == line, 1)
    assert (version.version, version.parent_version, version.line_id) == ("v0001", "", line)
    assert version.created_by == "labeling-policy" and "drift active" in version.reason
    data = objects.get_bytes(version.manifest.bucket, version.manifest.key, expected_sha256=version.manifest.sha256)
    assert version.manifest.key == f"{line}/v0001/manifest.jsonl"
    rows = [json.loads(line_) for line_ in data.splitlines()]
    assert {r["frame_id"]: r["label"] for r in rows} == {frames[k].frame_id: v for k, v in truth.items()}
    assert sum(version.split_counts.values()) == len(rows) == 6
    assert dict(version.class_counts) == {"ok": 3, "bruise": 1, "rot": 1, "scab": 1}
    # The training side's reader takes it as it is.
    assert {e.frame_id: e.split for e in parse_manifest(data)} == {r["frame_id"]: r["split"] for r in rows}
    sidecar = objects.get_bytes(version.manifest.bucket, version.manifest.key + ".sha256")
    assert sidecar.decode().split()[0] == version.manifest.sha256

    created = await read_events(stack.kafka_bootstrap, LabelCreated, lambda lc: lc.line_id == line, 7)
    sources = sorted(LabelSource.Name(lc.source) for lc in created)
    assert sources == ["LABEL_SOURCE_HUMAN"] * 6 + ["LABEL_SOURCE_MODEL"]
    listed = await stub.ListDatasets(pb.ListDatasetsRequest(dataset=line))
    assert [v.version for v in listed.versions] == ["v0001"]


async def test_cuts_are_reproducible_and_splits_stable_across_versions(publisher, labeling, helpers):
    service, stub = labeling
    h = helpers
    line = f"line-{uuid.uuid4().hex[:6]}"
    frames = [h.frame_event(line, f"cam-{i % 3}", {"ok": 0.6, "rot": 0.4}) for i in range(30)]
    await publish_frames(publisher, frames)
    await h.wait_known(stub, [m.frame_id for m in frames])
    for m in frames[:20]:
        await stub.SubmitLabel(pb.SubmitLabelRequest(frame_id=m.frame_id, label_class="rot", annotator="alice"))

    first = await stub.CutDataset(pb.CutDatasetRequest(dataset=f"{line}-a", line_id=line, requested_by="test"))
    twin = await stub.CutDataset(pb.CutDatasetRequest(dataset=f"{line}-b", line_id=line, requested_by="test"))
    assert first.manifest.sha256 == twin.manifest.sha256  # same labels in, same manifest out
    assert (first.version, twin.version) == ("v0001", "v0001")
    unchanged = await stub.CutDataset(pb.CutDatasetRequest(dataset=f"{line}-a", line_id=line))
    assert (unchanged.version, unchanged.manifest.sha256) == ("v0001", first.manifest.sha256)

    for m in frames[20:]:
        await stub.SubmitLabel(pb.SubmitLabelRequest(frame_id=m.frame_id, label_class="ok", annotator="bob"))
    await stub.SubmitLabel(pb.SubmitLabelRequest(frame_id=frames[0].frame_id, label_class="scab", annotator="bob"))
    second = await stub.CutDataset(pb.CutDatasetRequest(dataset=f"{line}-a", line_id=line, reason="more labels"))
    assert (second.version, second.parent_version, second.reason) == ("v0002", "v0001", "on request: more labels")

    def manifest(v):
        data = service.objects.get_bytes(v.manifest.bucket, v.manifest.key, expected_sha256=v.manifest.sha256)
        return {r["frame_id"]: r for r in map(json.loads, data.splitlines())}

    old, new = manifest(first), manifest(second)
    assert set(old) < set(new) and len(new) == 30
    assert all(new[f]["split"] == old[f]["split"] for f in old)
    assert new[frames[0].frame_id]["label"] == "scab" and old[frames[0].frame_id]["label"] == "rot"
    assert (await stub.GetDataset(pb.GetDatasetRequest(dataset=f"{line}-a", version="v0001"))).manifest.sha256 == \
        first.manifest.sha256


async def test_label_studio_round_trip_loses_nothing(stack, publisher, objects, labeling, helpers):
    service, stub = labeling
    h = helpers
    line = f"line-{uuid.uuid4().hex[:6]}"
    frames = [h.frame_event(line, "cam-1", {"ok": 0.55, "bruise": 0.45}) for _ in range(4)] + [
        h.frame_event(line, "cam-2", None)]
    for m in frames:
        objects.put_bytes(m.image.bucket, m.image.key, f"jpeg of {m.frame_id}".encode(), "image/jpeg")
    await publish_frames(publisher, frames)
    await h.wait_known(stub, [m.frame_id for m in frames])

    exported = await stub.ExportLabelStudio(pb.ExportLabelStudioRequest(line_id=line))
    tasks = json.loads(exported.tasks_json)
    assert exported.count == len(tasks) == 5
    by_frame = {t["data"]["frame_id"]: t for t in tasks}
    first = by_frame[frames[0].frame_id]
    with urllib.request.urlopen(first["data"]["image"], timeout=10) as response:  # the presigned link works
        assert response.read() == f"jpeg of {frames[0].frame_id}".encode()
    [prediction] = first["predictions"]
    assert prediction["model_version"] == "apples@3" and prediction["score"] == pytest.approx(0.55)
    assert prediction["result"][0]["type"] == "choices" and prediction["result"][0]["value"] == {"choices": ["ok"]}
    assert "predictions" not in by_frame[frames[4].frame_id]

    # What Label Studio gives back: the same tasks, with ids and annotators' answers.
    answers = {frames[0].frame_id: "bruise", frames[1].frame_id: "ok", frames[4].frame_id: "rot"}
    for i, task in enumerate(tasks):
        task["id"] = 100 + i
        if task["data"]["frame_id"] in answers:
            task["annotations"] = [{
                "id": 500 + i, "completed_by": 7, "was_cancelled": False, "created_at": "2026-11-22T05:00:00Z",
                "result": [{"from_name": "label", "to_name": "image", "type": "choices",
                            "value": {"choices": [answers[task["data"]["frame_id"]]]}}],
            }]
    ls_export = json.dumps(tasks).encode()
    imported = await stub.ImportLabelStudio(pb.ImportLabelStudioRequest(export_json=ls_export))
    assert (imported.imported, imported.skipped) == (3, 0)
    for frame_id, cls in answers.items():
        labels = await stub.GetFrameLabels(pb.GetFrameLabelsRequest(frame_id=frame_id))
        assert labels.effective.label_class == cls
        assert labels.effective.source == LabelSource.LABEL_SOURCE_IMPORT
        assert labels.effective.annotator == "labelstudio:7" and labels.effective.sha256 == by_frame[frame_id]["data"]["sha256"]
        assert labels.effective.created_at.ToJsonString() == "2026-11-22T05:00:00Z"  # when the annotator made it
    again = await stub.ImportLabelStudio(pb.ImportLabelStudioRequest(export_json=ls_export))
    assert (again.imported, again.skipped) == (0, 3)

    # Export again: the labels ride along as annotations; importing that file adds nothing.
    second = json.loads((await stub.ExportLabelStudio(pb.ExportLabelStudioRequest(line_id=line))).tasks_json)
    round_trip = {t["data"]["frame_id"]: [a["result"][0]["value"]["choices"][0] for a in t.get("annotations", [])]
                  for t in second}
    assert round_trip == {m.frame_id: [answers[m.frame_id]] if m.frame_id in answers else [] for m in frames}
    assert {a["created_at"] for t in second for a in t.get("annotations", [])} == {"2026-11-22T05:00:00Z"}
    assert {k: v for k, v in second[0]["data"].items() if k != "image"} == \
        {k: v for k, v in by_frame[second[0]["data"]["frame_id"]]["data"].items() if k != "image"}
    back = await stub.ImportLabelStudio(pb.ImportLabelStudioRequest(export_json=json.dumps(second).encode()))
    assert (back.imported, back.skipped) == (0, 3)
    unlabelled = await stub.ExportLabelStudio(pb.ExportLabelStudioRequest(line_id=line, only_unlabelled=True))
    assert unlabelled.count == 2


async def test_bad_input_gets_a_specific_status_and_changes_nothing(stack, publisher, labeling, helpers):
    service, stub = labeling
    h = helpers
    line = f"line-{uuid.uuid4().hex[:6]}"
    frame = h.frame_event(line, "cam-1", {"ok": 0.5, "rot": 0.5})
    await publish_frames(publisher, [frame])
    await h.wait_known(stub, [frame.frame_id])
    [task] = (await stub.NextTasks(pb.NextTasksRequest(annotator="alice", line_id=line, max_tasks=5))).tasks

    async def refused(call) -> tuple[grpc.StatusCode, str, str]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        return rpc_error(err.value)

    code, reason, detail = await refused(stub.SubmitLabel(pb.SubmitLabelRequest(
        frame_id="no-such-frame", label_class="ok", annotator="alice")))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "UNKNOWN_FRAME") and "no-such-frame" in detail
    code, reason, detail = await refused(stub.SubmitLabel(pb.SubmitLabelRequest(
        lease_id=task.lease_id, frame_id=frame.frame_id, label_class="mould", annotator="alice")))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_CLASS") and "ok, bruise, rot, scab" in detail

    ok = pb.SubmitLabelRequest(lease_id=task.lease_id, frame_id=frame.frame_id, label_class="rot", annotator="alice")
    first, retry = await stub.SubmitLabel(ok), await stub.SubmitLabel(ok)
    assert (first.duplicate, retry.duplicate, retry.label.label_id) == (False, True, first.label.label_id)
    code, reason, _ = await refused(stub.SubmitLabel(pb.SubmitLabelRequest(
        lease_id=task.lease_id, frame_id=frame.frame_id, label_class="ok", annotator="alice")))
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "LEASE_ALREADY_USED")

    malformed = {
        b"{not json": "not a Label Studio JSON export",
        b'{"data": {}}': "expected a JSON array of tasks",
        b'[{"data": {"image": "x"}}]': "no data.frame_id",
        json.dumps([{"data": {"frame_id": frame.frame_id}, "annotations": [
            {"result": [{"type": "choices", "value": {"choices": ["ok", "rot"]}}]}]}]).encode(): "exactly one choice",
        json.dumps([{"data": {"frame_id": frame.frame_id}, "annotations": [
            {"result": [{"type": "choices", "value": {"choices": ["mould"]}}]}]}]).encode(): "unknown class 'mould'",
        json.dumps([{"data": {"frame_id": frame.frame_id}, "annotations": [
            {"created_at": "yesterday", "result": [{"type": "choices", "value": {"choices": ["ok"]}}]}]}]).encode():
            "created_at 'yesterday' is not an ISO 8601 time",
    }
    for data, expected in malformed.items():
        code, reason, detail = await refused(stub.ImportLabelStudio(pb.ImportLabelStudioRequest(export_json=data)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and expected in detail, detail
    # One good annotation and one for an unknown frame: the whole file is refused, nothing stored.
    mixed = json.dumps([
        {"data": {"frame_id": frame.frame_id}, "annotations": [{"id": 1, "result": [
            {"type": "choices", "value": {"choices": ["scab"]}}]}]},
        {"data": {"frame_id": "ghost"}, "annotations": [{"id": 2, "result": [
            {"type": "choices", "value": {"choices": ["ok"]}}]}]},
    ]).encode()
    code, reason, detail = await refused(stub.ImportLabelStudio(pb.ImportLabelStudioRequest(export_json=mixed)))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "UNKNOWN_FRAME") and "task #1" in detail
    history = (await stub.GetFrameLabels(pb.GetFrameLabelsRequest(frame_id=frame.frame_id))).history
    assert [(lc.label_class, lc.annotator) for lc in history] == [("rot", "alice")]

    code, reason, _ = await refused(stub.GetDataset(pb.GetDatasetRequest(dataset="no-such-dataset")))
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "UNKNOWN_DATASET")
    code, reason, _ = await refused(stub.CutDataset(pb.CutDatasetRequest(line_id=f"empty-{line}")))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NOTHING_LABELLED")
    code, reason, _ = await refused(stub.NextTasks(pb.NextTasksRequest(line_id=line)))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MISSING_ANNOTATOR")

    # A frames.ingested.v1 without an image is dead-lettered with the reason, and not queued.
    broken = h.frame_event(line, "cam-1", {"ok": 0.5, "rot": 0.5})
    broken.ClearField("image")
    await publisher.publish(broken)
    bad_sha = h.frame_event(line, "cam-1", {"ok": 0.5, "rot": 0.5})
    bad_sha.image.sha256 = "not-a-sha"
    await publisher.publish(bad_sha)
    assert await _dlq_reason(stack.kafka_bootstrap, broken.frame_id) == "invalid_frame"
    assert await _dlq_reason(stack.kafka_bootstrap, bad_sha.frame_id) == "invalid_frame"
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.GetFrameLabels(pb.GetFrameLabelsRequest(frame_id=broken.frame_id))

    with urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert any(line_.startswith("lineloop_labeling_labels") and 'source="human"' in line_ for line_ in metrics.splitlines())
    for reason in ("UNKNOWN_FRAME", "UNKNOWN_CLASS", "LEASE_ALREADY_USED", "MALFORMED_LABEL_STUDIO_FILE"):
        assert any(line_.startswith("lineloop_rejections") and f'reason="{reason}"' in line_
                   for line_ in metrics.splitlines()), reason


async def _dlq_reason(bootstrap: str, frame_id: str) -> str:
    topic = event_type(FrameIngested).dlq_topic
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while asyncio.get_running_loop().time() < deadline:
            parts = await _partitions(consumer, topic)
            if parts:
                tps = [TopicPartition(topic, p) for p in parts]
                consumer.assign(tps)
                await consumer.seek_to_beginning(*tps)
                break
            await asyncio.sleep(0.5)
        while asyncio.get_running_loop().time() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    if FrameIngested.FromString(record.value).frame_id == frame_id:
                        return dict(record.headers)["dlq_reason"].decode()
    finally:
        await consumer.stop()
    raise AssertionError(f"{frame_id} never reached {topic}")


@pytest.mark.postgres
async def test_two_replicas_on_postgresql_never_hand_out_the_same_frame(stack, publisher, postgres_url, helpers):
    h = helpers
    group = f"labeling-pg-{uuid.uuid4().hex[:6]}"
    line = f"line-{uuid.uuid4().hex[:6]}"
    frames = [h.frame_event(line, f"cam-{i % 4}", {"ok": 0.5 + i / 100, "rot": 0.5 - i / 100}) for i in range(12)]
    cfg = lambda: h.service_settings(stack, postgres_url, consumer_group=group)  # noqa: E731
    async with h.running_labeling(cfg()) as (_, one), h.running_labeling(cfg()) as (_, two):
        await publish_frames(publisher, frames)
        await h.wait_known(one, [m.frame_id for m in frames])
        replies = await asyncio.gather(*[
            stub.NextTasks(pb.NextTasksRequest(annotator=who, line_id=line, max_tasks=4))
            for stub, who in ((one, "alice"), (two, "bob"), (one, "carol"), (two, "dave"))
        ])
        leased = [t.frame_id for reply in replies for t in reply.tasks]
        assert len(leased) == len(set(leased)) == 12
        task = replies[0].tasks[0]
        # A lease from one replica is honoured by the other.
        reply = await two.SubmitLabel(pb.SubmitLabelRequest(
            lease_id=task.lease_id, frame_id=task.frame_id, label_class="ok", annotator="alice"))
        assert not reply.duplicate
        assert (await one.SubmitLabel(pb.SubmitLabelRequest(
            lease_id=task.lease_id, frame_id=task.frame_id, label_class="ok", annotator="alice"))).duplicate
