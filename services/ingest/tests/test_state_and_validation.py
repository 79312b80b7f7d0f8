"""The serving picture in the database (SQLite and PostgreSQL) and validation before any I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

from lineloop.ingest import state
from lineloop.ingest.pipeline import Pipeline, Refused
from lineloop.ingest.scoring import routes_to_canary
from lineloop.ingest.settings import IngestSettings
from lineloop.storage.sql import Database
from lineloop.v1.events_pb2 import FrameCaptured, LineDeployment, ModelPromoted, RejectReason


def promoted(model: str, version: str, classes, *deployments: LineDeployment) -> ModelPromoted:
    return ModelPromoted(model_name=model, version=version, classes=classes, deployments=deployments)


def test_serving_picture_follows_promotions(database_url):
    db = Database(database_url)
    db.migrate(state.SCHEMA_COMPONENT, state.SCHEMA_VERSION, state.metadata)
    try:
        with db.transaction() as s:
            state.apply_promotion(s, promoted("apples", "3", ["ok", "rot"],
                LineDeployment(line_id="l1", triton_model="apples-t", production_version="3"),
                LineDeployment(line_id="l2", triton_model="apples-t", production_version="3")))
            state.apply_promotion(s, promoted("apples", "4", ["ok", "rot", "scab"],
                LineDeployment(line_id="l1", triton_model="apples-t", production_version="3",
                               canary_version="4", canary_share=1.7)))
        with db.session() as s:
            picture = state.load_deployments(s)
        # The second event is the model's whole picture: l2 is no longer served by it.
        assert set(picture) == {"l1"}
        l1 = picture["l1"]
        assert (l1.triton_model, l1.production_version, l1.canary_version, l1.canary_share) == ("apples-t", "3", "4", 1.0)
        assert l1.production_classes == ("ok", "rot") and l1.canary_classes == ("ok", "rot", "scab")
        assert routes_to_canary("any-frame", l1)
        with db.transaction() as s:
            state.apply_promotion(s, promoted("apples", "4", [], LineDeployment(line_id="l1")))
        with db.session() as s:
            assert state.load_deployments(s) == {}
    finally:
        db.dispose()


def test_canary_share_is_a_stable_fraction_of_frame_ids():
    dep = state.Deployment("l", "m", "m", "1", "2", 0.25, (), ())
    picks = [routes_to_canary(f"frame-{i}", dep) for i in range(4000)]
    assert 0.2 < sum(picks) / len(picks) < 0.3
    assert picks == [routes_to_canary(f"frame-{i}", dep) for i in range(4000)]
    assert not routes_to_canary("x", state.Deployment("l", "m", "m", "1", "", 0.9, (), ()))


async def test_validation_refuses_before_touching_storage_or_triton():
    # No object store or scorer at all: each of these must be refused before any I/O.
    pipeline = Pipeline(IngestSettings(lines=["line-a"]), objects=None, scorer=None, db=None)
    try:
        def captured(**fields) -> FrameCaptured:
            values = dict(frame_id="f-1", line_id="line-a", camera_id="cam-1", gateway_id="gw-1",
                          content_type="image/jpeg", inline_image=b"\xff\xd8")
            values.update(fields)
            return FrameCaptured(**values)

        future = FrameCaptured().captured_at
        future.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
        cases = [
            (captured(line_id="line-b"), RejectReason.REJECT_REASON_UNKNOWN_LINE),
            (captured(frame_id=""), RejectReason.REJECT_REASON_INVALID_ID),
            (captured(gateway_id="gw 1"), RejectReason.REJECT_REASON_INVALID_ID),
            (captured(frame_id="a..b"), RejectReason.REJECT_REASON_INVALID_ID),
            (captured(captured_at=future), RejectReason.REJECT_REASON_CAPTURE_TIME_IN_FUTURE),
            (captured(captured_at=Timestamp(seconds=0, nanos=-1)), RejectReason.REJECT_REASON_INVALID_CAPTURE_TIME),
            (captured(captured_at=Timestamp(seconds=2**62)), RejectReason.REJECT_REASON_INVALID_CAPTURE_TIME),
            (captured(content_type="image/tiff"), RejectReason.REJECT_REASON_UNSUPPORTED_FORMAT),
            (captured(inline_image=b"\xff" * (1024 * 1024 + 1)), RejectReason.REJECT_REASON_IMAGE_TOO_LARGE),
        ]
        for frame, reason in cases:
            outcome = await pipeline.prepare(frame)
            assert isinstance(outcome, Refused) and outcome.reason == reason, (RejectReason.Name(reason), outcome)
            assert outcome.detail
    finally:
        pipeline.close()
