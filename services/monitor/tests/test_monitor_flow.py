"""The monitor on the real broker: a dirty lens becomes one drift.detected (and no training request:
labeling answers drift with the next dataset version, which is what training runs on)."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

import grpc
import numpy as np
import pytest

from lineloop.bus import Bus
from lineloop.contracts.topics import event_type
from lineloop.runtime import error_info
from lineloop.v1 import common_pb2, events_pb2, monitor_pb2, monitor_pb2_grpc


def frame(line: str, i: int, rng: np.random.Generator, *, sharpness: float) -> events_pb2.FrameIngested:
    msg = events_pb2.FrameIngested(frame_id=f"{line}-{i}", line_id=line, camera_id=f"cam-{i % 2}")
    msg.ingested_at.GetCurrentTime()
    q = msg.quality
    q.brightness_mean, q.brightness_std, q.contrast = rng.normal(120, 5), rng.normal(40, 2), rng.normal(0.3, 0.02)
    q.sharpness = rng.normal(sharpness, sharpness * 0.1)
    q.mean_r, q.mean_g, q.mean_b = rng.normal(150, 5), rng.normal(90, 5), rng.normal(60, 5)
    p = msg.prediction
    p.status, p.model_name, p.model_version = common_pb2.PREDICTION_STATUS_OK, "apples", "3"
    p.predicted_class = "ok"
    p.scores["ok"], p.scores["rot"] = 0.9, 0.1
    return msg


async def test_a_dirty_lens_is_reported_once_and_no_run_is_requested_on_the_old_data(stack, monitor, publish_in_order,
                                                                                    topic_events):
    line = f"line-{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(1)
    producer = Bus(stack.kafka_bootstrap, source="test/ingest")
    await producer.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{monitor.grpc_port}")
    stub = monitor_pb2_grpc.MonitorServiceStub(channel)
    alerts = stub.WatchAlerts(monitor_pb2.WatchAlertsRequest(line_id=line))
    try:
        # the reference window (100) and clean current windows; then the lens gets dirty: sharpness collapses
        await publish_in_order(producer, [frame(line, i, rng, sharpness=900.0) for i in range(160)])
        await publish_in_order(producer, [frame(line, i, rng, sharpness=150.0) for i in range(160, 240)])
        alert = await asyncio.wait_for(alerts.read(), 60)
    finally:
        await producer.stop()

    assert alert.line_id == line and alert.feature == "sharpness" and alert.camera_id == ""
    assert alert.kind == events_pb2.ALERT_KIND_LINE_DRIFT and alert.state == events_pb2.ALERT_STATE_RAISED
    assert alert.score > alert.threshold > alert.clear_below
    drift, requests = await asyncio.gather(
        topic_events(events_pb2.DriftDetected, lambda m: m.line_id == line, quiet_s=2.0),
        # Every frame is handled (the alert came after them); a request would be on the topic by now.
        topic_events(events_pb2.TrainingRequested, lambda m: m.dataset == line, timeout=3),
    )
    assert [d.drift_id for d in drift] == [alert.drift_id]  # the cooldown keeps it to one report
    assert drift[0].kind == events_pb2.DRIFT_KIND_INPUT and drift[0].feature == "sharpness"
    assert requests == []

    report = await stub.GetDriftReport(monitor_pb2.GetDriftReportRequest(line_id=line))
    by_feature = {f.feature: f for f in report.features}
    assert by_feature["sharpness"].drifted and by_feature["sharpness"].current_mean < 300
    assert not by_feature["brightness_mean"].drifted
    health = await stub.GetModelHealth(monitor_pb2.GetModelHealthRequest(line_id=line))
    assert health.drift_active and health.frames_ingested == 240
    assert health.versions[0].model_version == "3" and health.versions[0].class_mix["ok"] == 1.0

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetModelHealth(monitor_pb2.GetModelHealthRequest(line_id="no-such-line"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and error_info(err.value).reason == "UNKNOWN_LINE"
    alerts.cancel()
    await channel.close()


async def test_human_labels_give_live_accuracy_per_version(stack, monitor):
    line = f"line-{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(2)
    producer = Bus(stack.kafka_bootstrap, source="test/producer")
    await producer.start()
    try:
        for i in range(10):
            await producer.publish(frame(line, i, rng, sharpness=900.0))
        for i in range(10):  # the model said "ok" everywhere; humans say 4 are rotten
            label = "rot" if i < 4 else "ok"
            source = events_pb2.LABEL_SOURCE_HUMAN
            await producer.publish(events_pb2.LabelCreated(frame_id=f"{line}-{i}", line_id=line, label_class=label, source=source))
        await producer.publish(events_pb2.LabelCreated(frame_id=f"{line}-5", line_id=line, label_class="rot",
                                                       source=events_pb2.LABEL_SOURCE_MODEL))  # not ground truth
    finally:
        await producer.stop()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{monitor.grpc_port}") as channel:
        stub = monitor_pb2_grpc.MonitorServiceStub(channel)
        for _ in range(100):
            try:
                health = await stub.GetModelHealth(monitor_pb2.GetModelHealthRequest(line_id=line))
                if health.versions and health.versions[0].frames_labelled == 10:
                    break
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.3)
    assert health.versions[0].frames_labelled == 10
    assert health.versions[0].live_accuracy == pytest.approx(0.6)


# The default window sizes: large enough for the 40% of zeros unscored frames used to add to
# the confidence statistic to stand far above sampling noise.
@pytest.mark.parametrize("monitor", [{"reference_frames": 200, "current_frames": 100}], indirect=True)
async def test_a_triton_outage_is_a_scoring_alert_not_drift(stack, monitor, publish_in_order, topic_events):
    """40 of the current window's 100 frames come without a prediction (Triton down): their
    quality is as usual, so nothing drifted; the line is in a scoring outage instead."""
    line = f"line-{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(4)
    outage = "Triton at 127.0.0.1:8001 UNAVAILABLE scoring with apples:3: connection refused"
    confidence = {}
    producer = Bus(stack.kafka_bootstrap, source="test/ingest")
    await producer.start()
    try:
        msgs = []
        for i in range(300):
            msg = frame(line, i, rng, sharpness=900.0)
            confidence[i] = msg.prediction.scores["ok"] = rng.uniform(0.6, 0.99)
            msg.prediction.scores["rot"] = 1 - confidence[i]
            if i >= 200 and i % 5 < 2:  # as ingest's scoring.missing() publishes it
                del confidence[i]
                model = msg.prediction.model_name  # the deployed model that failed to score it
                msg.prediction.Clear()
                msg.prediction.status = common_pb2.PREDICTION_STATUS_MISSING
                msg.prediction.source = common_pb2.PREDICTION_SOURCE_CLOUD
                msg.prediction.missing_reason = outage
                msg.prediction.model_name = model
            msgs.append(msg)
        await publish_in_order(producer, msgs)  # 200 scored, then 100 with 40 unscored
    finally:
        await producer.stop()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{monitor.grpc_port}") as channel:
        stub = monitor_pb2_grpc.MonitorServiceStub(channel)
        for _ in range(200):
            try:
                health = await stub.GetModelHealth(monitor_pb2.GetModelHealthRequest(line_id=line))
                if health.frames_ingested == 300:
                    break
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.3)
        report = await stub.GetDriftReport(monitor_pb2.GetDriftReportRequest(line_id=line))

    assert health.frames_ingested == 300 and not health.drift_active and not report.recent
    scoring = health.scoring
    assert scoring.outage and scoring.unscored_share == pytest.approx(0.4) and scoring.window_frames == 100
    assert scoring.frames_unscored == 40 and scoring.last_missing_reason == outage
    version = health.versions[0]
    assert version.frames_scored == 260 and version.mean_confidence == pytest.approx(np.mean(list(confidence.values())), abs=1e-3)
    by_feature = {f.feature: f for f in report.features}
    assert not report.recent and not any(f.drifted for f in report.features)
    current = [c for i, c in confidence.items() if i >= 200]  # unscored frames are left out, not 0.0
    assert by_feature["confidence"].current_mean == pytest.approx(np.mean(current), abs=1e-3)
    # All 300 frames are handled (frames_ingested): a drift report would be on the topic by now.
    drift = await topic_events(events_pb2.DriftDetected, lambda m: m.line_id == line, timeout=3)
    assert drift == []

    env = {**os.environ, "LINELOOP_MONITOR_GRPC": f"127.0.0.1:{monitor.grpc_port}", "COLUMNS": "200"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lineloop.cli.main", "health", "show", "--line", line, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    text = " ".join(out.decode().split())
    assert "SCORING OUTAGE" in text and "40% of the newest 100 frames unscored" in text
    # The alert as raised: at the first evaluation above the threshold (the share then, not now).
    assert "1 active alert(s): " in text and f"RAISED scoring outage on line {line}: unscored_share 0." in text
    assert "> 0.200" in text
    assert "40 frames ingested without a prediction in all: not in prediction statistics, not re-scored" in text
    assert outage in text


def test_topics_the_monitor_reads_and_writes_exist_in_the_contract():
    for msg in (events_pb2.FrameIngested, events_pb2.FrameRejected, events_pb2.LabelCreated,
                events_pb2.ModelPromoted, events_pb2.DriftDetected):
        assert event_type(msg).topic.endswith(".v1")
