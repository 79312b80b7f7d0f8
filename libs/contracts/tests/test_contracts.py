"""The contracts: generated code matches proto/, and every event is fully described."""

from pathlib import Path

import pytest

from lineloop.contracts.codegen import stale_files
from lineloop.contracts.topics import BY_TOPIC, EVENTS, event_type
from lineloop.v1 import common_pb2, events_pb2

ROOT = Path(__file__).resolve().parents[3]
DESIGN_TOPICS = {
    "frames.captured.v1", "frames.ingested.v1", "frames.rejected.v1", "labels.created.v1",
    "datasets.versioned.v1", "training.requested.v1", "models.trained.v1", "models.registered.v1",
    "models.compiled.v1", "models.promoted.v1", "edge.rollouts.v1", "drift.detected.v1", "alerts.changed.v1",
}
SERVICES = {"IngestService", "LabelingService", "TrainingService", "RegistryService", "CompilerService", "MonitorService"}


def test_generated_code_is_fresh():
    assert stale_files(ROOT / "proto", ROOT / "libs" / "contracts" / "src") == [], "run `make proto`"


def test_every_design_topic_has_exactly_one_event_message():
    assert set(BY_TOPIC) == DESIGN_TOPICS
    assert len(EVENTS) == len(DESIGN_TOPICS)


@pytest.mark.parametrize("topic", sorted(DESIGN_TOPICS))
def test_key_field_names_a_string_field_of_the_message(topic):
    et = BY_TOPIC[topic]
    field = et.message.DESCRIPTOR.fields_by_name.get(et.key_field)
    assert field is not None, f"{et.ce_type}: key_field {et.key_field!r} is not a field"
    assert field.type == field.TYPE_STRING


def test_only_frames_captured_accepts_json():
    assert [t for t, e in BY_TOPIC.items() if e.accepts_json] == ["frames.captured.v1"]


def test_key_of_uses_the_ordering_unit():
    assert event_type(events_pb2.FrameCaptured).key_of(events_pb2.FrameCaptured(camera_id="cam-7")) == b"cam-7"
    assert event_type(events_pb2.ModelPromoted).key_of(events_pb2.ModelPromoted()) is None


def test_non_events_are_refused():
    with pytest.raises(TypeError, match="no \\(lineloop.v1.topic\\) option"):
        event_type(common_pb2.Prediction)


def test_the_six_grpc_services_exist():
    from lineloop.v1 import compiler_pb2, ingest_pb2, labeling_pb2, monitor_pb2, registry_pb2, training_pb2
    found = {name for m in (ingest_pb2, labeling_pb2, training_pb2, registry_pb2, compiler_pb2, monitor_pb2)
             for name in m.DESCRIPTOR.services_by_name}
    assert found == SERVICES
