"""Labeling with auth on (issue 11): labels carry the caller's identity, never a name from the request or the file."""

from __future__ import annotations

import json
import uuid

import grpc
import pytest

from lineloop.bus import Bus
from lineloop.runtime.client import ClientCredentials, aio_channel
from lineloop.runtime.pki import jwks_json, mint_token, rsa_key
from lineloop.runtime.settings import SecuritySettings
from lineloop.v1 import labeling_pb2 as pb
from lineloop.v1.events_pb2 import LabelSource
from lineloop.v1.labeling_pb2_grpc import LabelingServiceStub

ISSUER, AUDIENCE = "https://id.test", "lineloop"


async def test_labels_and_imports_record_the_authenticated_caller(stack, tmp_path, helpers):
    key, jwks = rsa_key(), tmp_path / "jwks.json"
    jwks.write_text(jwks_json({"k1": key.public_key()}))
    security = SecuritySettings(auth_mode="required", auth_issuer=ISSUER, auth_audience=AUDIENCE, auth_jwks_file=jwks)

    def as_(sub: str, role: str) -> ClientCredentials:
        return ClientCredentials(token=mint_token(key, issuer=ISSUER, audience=AUDIENCE, subject=sub, roles=[role], kid="k1"))

    line = f"line-{uuid.uuid4().hex[:6]}"
    frames = [helpers.frame_event(line, "cam-1", None) for _ in range(2)]
    cfg = helpers.service_settings(stack, f"sqlite:///{tmp_path / 'labeling.db'}", security=security)
    publisher = Bus(stack.kafka_bootstrap, source="lineloop/test-ingest")
    await publisher.start()
    try:
        async with helpers.running_labeling(cfg) as (service, anonymous):
            target = f"127.0.0.1:{service.grpc_port}"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await anonymous.NextTasks(pb.NextTasksRequest(annotator="mallory", line_id=line))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            for msg in frames:
                await publisher.publish(msg)
            async with aio_channel(target, as_("ann-ada", "annotator")) as channel:
                stub = LabelingServiceStub(channel)
                await helpers.wait_known(stub, [m.frame_id for m in frames])
                # the request names someone else: the lease and the label are ada's
                [task] = (await stub.NextTasks(pb.NextTasksRequest(annotator="mallory", line_id=line, max_tasks=1))).tasks
                submitted = await stub.SubmitLabel(pb.SubmitLabelRequest(
                    lease_id=task.lease_id, frame_id=task.frame_id, label_class="rot", annotator="mallory"))
                assert submitted.label.annotator == "ann-ada"
                # an annotator may not cut datasets
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.CutDataset(pb.CutDatasetRequest(dataset=line, line_id=line))
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            other = next(m for m in frames if m.frame_id != task.frame_id)

            def export(annotation_id: int, cls: str) -> bytes:
                return json.dumps([{"data": {"frame_id": other.frame_id}, "annotations": [{
                    "id": annotation_id, "completed_by": 7,
                    "result": [{"type": "choices", "value": {"choices": [cls]}}]}]}]).encode()

            # An ML engineer's import trains but is no ground truth: the frame stays queued for review.
            async with aio_channel(target, as_("mle-max", "ml-engineer")) as channel:
                stub = LabelingServiceStub(channel)
                assert (await stub.ImportLabelStudio(pb.ImportLabelStudioRequest(export_json=export(1, "scab")))).imported == 1
                labels = await stub.GetFrameLabels(pb.GetFrameLabelsRequest(frame_id=other.frame_id))
            [imported] = labels.history
            assert (imported.source, imported.annotator) == (LabelSource.LABEL_SOURCE_IMPORT_UNVERIFIED, "mle-max")
            assert "annotator in the file: labelstudio:7" in imported.note
            assert labels.effective.source == LabelSource.LABEL_SOURCE_IMPORT_UNVERIFIED  # no ground truth yet
            # An annotator's import of the same frame is.
            async with aio_channel(target, as_("ann-bea", "annotator")) as channel:
                stub = LabelingServiceStub(channel)
                assert (await stub.ImportLabelStudio(pb.ImportLabelStudioRequest(export_json=export(2, "rot")))).imported == 1
                effective = (await stub.GetFrameLabels(pb.GetFrameLabelsRequest(frame_id=other.frame_id))).effective
            assert (effective.source, effective.annotator, effective.label_class) == (
                LabelSource.LABEL_SOURCE_IMPORT, "ann-bea", "rot")
    finally:
        await publisher.stop()
