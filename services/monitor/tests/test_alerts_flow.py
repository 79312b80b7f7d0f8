"""Alerts on the real broker: raised once and cleared once, on WatchAlerts and on alerts.changed.v1.
Small windows (settings) keep each test to seconds."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid

import grpc
import numpy as np
import pytest

from lineloop.bus import Bus
from lineloop.v1 import common_pb2, events_pb2, monitor_pb2, monitor_pb2_grpc

RAISED, CLEARED = events_pb2.ALERT_STATE_RAISED, events_pb2.ALERT_STATE_CLEARED


def frame(line: str, i: int, rng: np.random.Generator, *, sharpness: float, camera: str = "") -> events_pb2.FrameIngested:
    """A scored frame of steady quality but for its sharpness (test_monitor_flow's, on a chosen camera)."""
    msg = events_pb2.FrameIngested(frame_id=f"{line}-{i}", line_id=line, camera_id=camera or f"cam-{i % 2}")
    msg.ingested_at.GetCurrentTime()
    q = msg.quality
    q.brightness_mean, q.brightness_std, q.contrast = rng.normal(120, 5), rng.normal(40, 2), rng.normal(0.3, 0.02)
    q.sharpness = rng.normal(sharpness, sharpness * 0.1)
    q.mean_r, q.mean_g, q.mean_b = rng.normal(150, 5), rng.normal(90, 5), rng.normal(60, 5)
    p = msg.prediction
    p.status, p.model_name, p.model_version, p.predicted_class = common_pb2.PREDICTION_STATUS_OK, "apples", "3", "ok"
    p.scores["ok"], p.scores["rot"] = 0.9, 0.1
    return msg


def on_camera(line: str, i: int, camera: str, rng: np.random.Generator, *, sharpness: float = 900.0):
    return frame(line, i, rng, sharpness=sharpness, camera=camera)


async def watch_until(stub, line: str, done, timeout: float = 60.0) -> list[events_pb2.Alert]:
    """Alerts of `line` from WatchAlerts until `done(alerts)` holds."""
    seen: list[events_pb2.Alert] = []
    call = stub.WatchAlerts(monitor_pb2.WatchAlertsRequest(line_id=line))

    async def read() -> None:
        async for alert in call:
            seen.append(alert)
            if done(seen):
                return

    try:
        await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        pytest.fail(f"WatchAlerts gave {[(a.kind, a.camera_id, a.state) for a in seen]} in {timeout} s")
    finally:
        call.cancel()
    return seen


async def active_alerts(stub, line: str) -> list[events_pb2.Alert]:
    """The line's active alerts; none while the monitor has not handled its first frame yet."""
    try:
        return list((await stub.GetModelHealth(monitor_pb2.GetModelHealthRequest(line_id=line))).active_alerts)
    except grpc.aio.AioRpcError as err:
        if err.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return []


def transitions(alerts, kind: int) -> list[tuple[str, int, str]]:
    return [(a.camera_id, a.state, a.alert_id) for a in alerts if a.kind == kind]


@pytest.mark.parametrize("monitor", [{"reference_frames": 60, "current_frames": 30}], indirect=True)
async def test_one_dirty_lens_of_two_is_named_raised_once_and_cleared_once(stack, monitor, publish_in_order,
                                                                           topic_events):
    line = f"line-{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(11)
    producer = Bus(stack.kafka_bootstrap, source="test/ingest")
    await producer.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{monitor.grpc_port}") as channel:
        stub = monitor_pb2_grpc.MonitorServiceStub(channel)
        watching = asyncio.create_task(watch_until(stub, line, lambda seen: any(
            a.kind == events_pb2.ALERT_KIND_CAMERA_DRIFT and a.state == CLEARED for a in seen)))
        await asyncio.sleep(0.5)  # the stream is open before the first frame
        try:
            i = 0
            # 100 clean frames per camera: each camera's reference (60) and clean current windows;
            # then cam-1's lens is dirty for 40 of its frames; then it is clean again for 100.
            for phase, frames_per_camera in (("clean", 100), ("dirty", 40), ("clean", 100)):
                batch = []
                for _ in range(frames_per_camera):
                    for camera in ("cam-0", "cam-1"):
                        dirty = phase == "dirty" and camera == "cam-1"
                        batch.append(on_camera(line, i, camera, rng, sharpness=150.0 if dirty else 900.0))
                        i += 1
                await publish_in_order(producer, batch)
            seen = await watching
        finally:
            await producer.stop()
        health = await stub.GetModelHealth(monitor_pb2.GetModelHealthRequest(line_id=line))

    [(camera, state, alert_id), (camera_2, state_2, alert_id_2)] = transitions(seen, events_pb2.ALERT_KIND_CAMERA_DRIFT)
    assert (camera, state) == ("cam-1", RAISED) and (camera_2, state_2, alert_id_2) == ("cam-1", CLEARED, alert_id)
    raised = next(a for a in seen if a.alert_id == alert_id and a.state == RAISED)
    assert raised.feature == "sharpness" and raised.score > raised.threshold > raised.clear_below
    cleared = next(a for a in seen if a.alert_id == alert_id and a.state == CLEARED)
    assert cleared.score < cleared.clear_below and cleared.raised_at == raised.raised_at
    assert not any(a.kind == events_pb2.ALERT_KIND_CAMERA_DRIFT for a in health.active_alerts)

    on_broker = await topic_events(events_pb2.Alert, lambda a: a.line_id == line, quiet_s=2.0)
    assert transitions(on_broker, events_pb2.ALERT_KIND_CAMERA_DRIFT) == [("cam-1", RAISED, alert_id),
                                                                         ("cam-1", CLEARED, alert_id)]


@pytest.mark.parametrize("monitor", [{"camera_silent_s": 1.5, "alert_check_every_s": 0.2}], indirect=True)
async def test_a_camera_that_goes_silent_raises_and_clears_when_it_sends_again(stack, monitor):
    line = f"line-{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(12)
    producer = Bus(stack.kafka_bootstrap, source="test/ingest")
    await producer.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{monitor.grpc_port}") as channel:
        stub = monitor_pb2_grpc.MonitorServiceStub(channel)

        def cam_0_back(seen) -> bool:
            return any(a.kind == events_pb2.ALERT_KIND_CAMERA_SILENT and a.state == CLEARED for a in seen)

        watching = asyncio.create_task(watch_until(stub, line, cam_0_back, timeout=40))
        await asyncio.sleep(0.5)
        try:
            i = 0
            for camera in ("cam-0", "cam-1") * 5:
                await producer.publish(on_camera(line, i, camera, rng))
                i += 1
            # cam-0 stops; cam-1 keeps sending well within camera_silent_s until cam-0's alert is up.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while loop.time() < deadline:
                await producer.publish(on_camera(line, i, "cam-1", rng))
                i += 1
                active = await active_alerts(stub, line)
                if any(a.kind == events_pb2.ALERT_KIND_CAMERA_SILENT for a in active):
                    break
                await asyncio.sleep(0.25)
            [active] = active
            assert (active.kind, active.camera_id) == (events_pb2.ALERT_KIND_CAMERA_SILENT, "cam-0")
            await producer.publish(on_camera(line, i, "cam-0", rng))
            await producer.publish(on_camera(line, i + 1, "cam-1", rng))
            seen = await watching
        finally:
            await producer.stop()

    silent = transitions(seen, events_pb2.ALERT_KIND_CAMERA_SILENT)
    assert [(camera, state) for camera, state, _ in silent] == [("cam-0", RAISED), ("cam-0", CLEARED)]
    assert silent[0][2] == silent[1][2]


# max_unscored_share 0.2 and unscored_clear_share 0.1 of a current window of 20 frames.
@pytest.mark.parametrize("monitor", [{"reference_frames": 40, "current_frames": 20}], indirect=True)
async def test_a_scoring_outage_is_on_watch_alerts_and_clears(stack, monitor, publish_in_order):
    line = f"line-{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(13)
    outage = "Triton at 127.0.0.1:8001 UNAVAILABLE"
    # `lineloop health watch` prints the same raise and clear.
    env = {**os.environ, "LINELOOP_MONITOR_GRPC": f"127.0.0.1:{monitor.grpc_port}", "COLUMNS": "300"}
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lineloop.cli.main", "health", "watch", "--line", line, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    assert b"watching alerts" in await asyncio.wait_for(cli.stdout.readline(), 60)
    producer = Bus(stack.kafka_bootstrap, source="test/ingest")
    await producer.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{monitor.grpc_port}") as channel:
        stub = monitor_pb2_grpc.MonitorServiceStub(channel)
        watching = asyncio.create_task(watch_until(stub, line, lambda seen: any(
            a.kind == events_pb2.ALERT_KIND_SCORING_OUTAGE and a.state == CLEARED for a in seen)))
        await asyncio.sleep(0.5)
        try:
            batch = []
            for i in range(120):  # scored, then 20 frames without a prediction, then scored again
                msg = frame(line, i, rng, sharpness=900.0)
                if 60 <= i < 80:  # as ingest publishes it: the deployed model that failed named
                    model = msg.prediction.model_name
                    msg.prediction.Clear()
                    msg.prediction.status = common_pb2.PREDICTION_STATUS_MISSING
                    msg.prediction.missing_reason = outage
                    msg.prediction.model_name = model
                batch.append(msg)
            await publish_in_order(producer, batch)  # batches of 20: the three phases stay in order
            seen = await watching
        finally:
            await producer.stop()

    printed = []
    try:
        while not any("CLEARED" in text for text in printed):
            printed.append((await asyncio.wait_for(cli.stdout.readline(), 30)).decode())
    finally:
        cli.terminate()
        await cli.wait()
    outages = [a for a in seen if a.kind == events_pb2.ALERT_KIND_SCORING_OUTAGE]
    assert [a.state for a in outages] == [RAISED, CLEARED] and outages[0].alert_id == outages[1].alert_id
    printed = [" ".join(text.split()) for text in printed if "scoring outage" in text]
    assert len(printed) == 2 and f"RAISED scoring outage on line {line}: unscored_share" in printed[0]
    assert f"CLEARED scoring outage on line {line}" in printed[1] and outages[0].alert_id in printed[1]
    assert outages[0].feature == "unscored_share" and outages[0].score > 0.2 and outage in outages[0].detail
    assert outages[1].score < 0.1 and outages[0].camera_id == ""
