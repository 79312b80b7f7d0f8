"""Leases expire for real: a short-lease service on the real broker and database."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest

from lineloop.bus import Bus
from lineloop.runtime import error_info
from lineloop.v1 import labeling_pb2 as pb


async def test_an_expired_lease_is_refused_and_the_frame_is_handed_out_again(stack, helpers, tmp_path):
    line = f"line-{uuid.uuid4().hex[:6]}"
    frame = helpers.frame_event(line, "cam-1", {"ok": 0.5, "rot": 0.5})
    publisher = Bus(stack.kafka_bootstrap, source="lineloop/test-ingest")
    await publisher.start()
    try:
        await publisher.publish(frame)
    finally:
        await publisher.stop()
    cfg = helpers.service_settings(stack, f"sqlite:///{tmp_path / 'labeling.db'}", lease_s=3.0)
    async with helpers.running_labeling(cfg) as (_, stub):
        await helpers.wait_known(stub, [frame.frame_id])
        [task] = (await stub.NextTasks(pb.NextTasksRequest(annotator="alice", line_id=line, max_tasks=5))).tasks
        assert (await stub.NextTasks(pb.NextTasksRequest(annotator="bob", line_id=line, max_tasks=5))).tasks == []
        await asyncio.sleep(3.2)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SubmitLabel(pb.SubmitLabelRequest(
                lease_id=task.lease_id, frame_id=frame.frame_id, label_class="rot", annotator="alice"))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(err.value).reason == "LEASE_EXPIRED" and "expired at" in err.value.details()
        [again] = (await stub.NextTasks(pb.NextTasksRequest(annotator="bob", line_id=line, max_tasks=5))).tasks
        assert again.frame_id == frame.frame_id and again.lease_id != task.lease_id
        reply = await stub.SubmitLabel(pb.SubmitLabelRequest(
            lease_id=again.lease_id, frame_id=frame.frame_id, label_class="rot", annotator="bob"))
        history = (await stub.GetFrameLabels(pb.GetFrameLabelsRequest(frame_id=frame.frame_id))).history
        assert [(lc.label_id, lc.annotator) for lc in history] == [(reply.label.label_id, "bob")]
