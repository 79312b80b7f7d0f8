import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from lineloop.v1 import common_pb2 as _common_pb2
from lineloop.v1 import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RejectReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REJECT_REASON_UNSPECIFIED: _ClassVar[RejectReason]
    REJECT_REASON_UNDECODABLE_IMAGE: _ClassVar[RejectReason]
    REJECT_REASON_UNSUPPORTED_FORMAT: _ClassVar[RejectReason]
    REJECT_REASON_IMAGE_TOO_LARGE: _ClassVar[RejectReason]
    REJECT_REASON_SHA256_MISMATCH: _ClassVar[RejectReason]
    REJECT_REASON_INVALID_ID: _ClassVar[RejectReason]
    REJECT_REASON_CAPTURE_TIME_IN_FUTURE: _ClassVar[RejectReason]
    REJECT_REASON_UNKNOWN_LINE: _ClassVar[RejectReason]
    REJECT_REASON_IMAGE_NOT_FOUND: _ClassVar[RejectReason]
    REJECT_REASON_MISSING_IMAGE: _ClassVar[RejectReason]
    REJECT_REASON_INVALID_CAPTURE_TIME: _ClassVar[RejectReason]

class LabelSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LABEL_SOURCE_UNSPECIFIED: _ClassVar[LabelSource]
    LABEL_SOURCE_HUMAN: _ClassVar[LabelSource]
    LABEL_SOURCE_MODEL: _ClassVar[LabelSource]
    LABEL_SOURCE_IMPORT: _ClassVar[LabelSource]
    LABEL_SOURCE_IMPORT_UNVERIFIED: _ClassVar[LabelSource]

class SuspectFate(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SUSPECT_FATE_UNSPECIFIED: _ClassVar[SuspectFate]
    SUSPECT_FATE_PENDING: _ClassVar[SuspectFate]
    SUSPECT_FATE_CONFIRMED: _ClassVar[SuspectFate]
    SUSPECT_FATE_CORRECTED: _ClassVar[SuspectFate]

class GateOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GATE_OUTCOME_UNSPECIFIED: _ClassVar[GateOutcome]
    GATE_OUTCOME_PASSED: _ClassVar[GateOutcome]
    GATE_OUTCOME_FAILED: _ClassVar[GateOutcome]
    GATE_OUTCOME_NOT_ENOUGH_EVIDENCE: _ClassVar[GateOutcome]

class BuildStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BUILD_STATUS_UNSPECIFIED: _ClassVar[BuildStatus]
    BUILD_STATUS_OK: _ClassVar[BuildStatus]
    BUILD_STATUS_REJECTED: _ClassVar[BuildStatus]
    BUILD_STATUS_UNAVAILABLE: _ClassVar[BuildStatus]
    BUILD_STATUS_FAILED: _ClassVar[BuildStatus]

class DriftKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DRIFT_KIND_UNSPECIFIED: _ClassVar[DriftKind]
    DRIFT_KIND_INPUT: _ClassVar[DriftKind]
    DRIFT_KIND_PREDICTION: _ClassVar[DriftKind]
    DRIFT_KIND_ACCURACY: _ClassVar[DriftKind]

class AlertKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALERT_KIND_UNSPECIFIED: _ClassVar[AlertKind]
    ALERT_KIND_LINE_DRIFT: _ClassVar[AlertKind]
    ALERT_KIND_CAMERA_DRIFT: _ClassVar[AlertKind]
    ALERT_KIND_SCORING_OUTAGE: _ClassVar[AlertKind]
    ALERT_KIND_CAMERA_SILENT: _ClassVar[AlertKind]
    ALERT_KIND_CAMERA_REFUSED: _ClassVar[AlertKind]

class AlertState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALERT_STATE_UNSPECIFIED: _ClassVar[AlertState]
    ALERT_STATE_RAISED: _ClassVar[AlertState]
    ALERT_STATE_CLEARED: _ClassVar[AlertState]
REJECT_REASON_UNSPECIFIED: RejectReason
REJECT_REASON_UNDECODABLE_IMAGE: RejectReason
REJECT_REASON_UNSUPPORTED_FORMAT: RejectReason
REJECT_REASON_IMAGE_TOO_LARGE: RejectReason
REJECT_REASON_SHA256_MISMATCH: RejectReason
REJECT_REASON_INVALID_ID: RejectReason
REJECT_REASON_CAPTURE_TIME_IN_FUTURE: RejectReason
REJECT_REASON_UNKNOWN_LINE: RejectReason
REJECT_REASON_IMAGE_NOT_FOUND: RejectReason
REJECT_REASON_MISSING_IMAGE: RejectReason
REJECT_REASON_INVALID_CAPTURE_TIME: RejectReason
LABEL_SOURCE_UNSPECIFIED: LabelSource
LABEL_SOURCE_HUMAN: LabelSource
LABEL_SOURCE_MODEL: LabelSource
LABEL_SOURCE_IMPORT: LabelSource
LABEL_SOURCE_IMPORT_UNVERIFIED: LabelSource
SUSPECT_FATE_UNSPECIFIED: SuspectFate
SUSPECT_FATE_PENDING: SuspectFate
SUSPECT_FATE_CONFIRMED: SuspectFate
SUSPECT_FATE_CORRECTED: SuspectFate
GATE_OUTCOME_UNSPECIFIED: GateOutcome
GATE_OUTCOME_PASSED: GateOutcome
GATE_OUTCOME_FAILED: GateOutcome
GATE_OUTCOME_NOT_ENOUGH_EVIDENCE: GateOutcome
BUILD_STATUS_UNSPECIFIED: BuildStatus
BUILD_STATUS_OK: BuildStatus
BUILD_STATUS_REJECTED: BuildStatus
BUILD_STATUS_UNAVAILABLE: BuildStatus
BUILD_STATUS_FAILED: BuildStatus
DRIFT_KIND_UNSPECIFIED: DriftKind
DRIFT_KIND_INPUT: DriftKind
DRIFT_KIND_PREDICTION: DriftKind
DRIFT_KIND_ACCURACY: DriftKind
ALERT_KIND_UNSPECIFIED: AlertKind
ALERT_KIND_LINE_DRIFT: AlertKind
ALERT_KIND_CAMERA_DRIFT: AlertKind
ALERT_KIND_SCORING_OUTAGE: AlertKind
ALERT_KIND_CAMERA_SILENT: AlertKind
ALERT_KIND_CAMERA_REFUSED: AlertKind
ALERT_STATE_UNSPECIFIED: AlertState
ALERT_STATE_RAISED: AlertState
ALERT_STATE_CLEARED: AlertState

class FrameCaptured(_message.Message):
    __slots__ = ("frame_id", "line_id", "camera_id", "gateway_id", "captured_at", "image_ref", "inline_image", "content_type", "edge_prediction", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    LINE_ID_FIELD_NUMBER: _ClassVar[int]
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_AT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_REF_FIELD_NUMBER: _ClassVar[int]
    INLINE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    EDGE_PREDICTION_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    frame_id: str
    line_id: str
    camera_id: str
    gateway_id: str
    captured_at: _timestamp_pb2.Timestamp
    image_ref: _common_pb2.ObjectRef
    inline_image: bytes
    content_type: str
    edge_prediction: _common_pb2.Prediction
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, frame_id: _Optional[str] = ..., line_id: _Optional[str] = ..., camera_id: _Optional[str] = ..., gateway_id: _Optional[str] = ..., captured_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., image_ref: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., inline_image: _Optional[bytes] = ..., content_type: _Optional[str] = ..., edge_prediction: _Optional[_Union[_common_pb2.Prediction, _Mapping]] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class FrameIngested(_message.Message):
    __slots__ = ("frame_id", "line_id", "camera_id", "gateway_id", "captured_at", "ingested_at", "image", "content_type", "width", "height", "quality", "prediction", "edge_prediction", "duplicate", "duplicate_of", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    LINE_ID_FIELD_NUMBER: _ClassVar[int]
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_AT_FIELD_NUMBER: _ClassVar[int]
    INGESTED_AT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    EDGE_PREDICTION_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_OF_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    frame_id: str
    line_id: str
    camera_id: str
    gateway_id: str
    captured_at: _timestamp_pb2.Timestamp
    ingested_at: _timestamp_pb2.Timestamp
    image: _common_pb2.ObjectRef
    content_type: str
    width: int
    height: int
    quality: _common_pb2.QualityStats
    prediction: _common_pb2.Prediction
    edge_prediction: _common_pb2.Prediction
    duplicate: bool
    duplicate_of: str
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, frame_id: _Optional[str] = ..., line_id: _Optional[str] = ..., camera_id: _Optional[str] = ..., gateway_id: _Optional[str] = ..., captured_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., ingested_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., image: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., content_type: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., quality: _Optional[_Union[_common_pb2.QualityStats, _Mapping]] = ..., prediction: _Optional[_Union[_common_pb2.Prediction, _Mapping]] = ..., edge_prediction: _Optional[_Union[_common_pb2.Prediction, _Mapping]] = ..., duplicate: _Optional[bool] = ..., duplicate_of: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class FrameRejected(_message.Message):
    __slots__ = ("frame_id", "line_id", "camera_id", "gateway_id", "reason", "detail", "captured_at", "rejected_at", "source_event_id")
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    LINE_ID_FIELD_NUMBER: _ClassVar[int]
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_AT_FIELD_NUMBER: _ClassVar[int]
    REJECTED_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    frame_id: str
    line_id: str
    camera_id: str
    gateway_id: str
    reason: RejectReason
    detail: str
    captured_at: _timestamp_pb2.Timestamp
    rejected_at: _timestamp_pb2.Timestamp
    source_event_id: str
    def __init__(self, frame_id: _Optional[str] = ..., line_id: _Optional[str] = ..., camera_id: _Optional[str] = ..., gateway_id: _Optional[str] = ..., reason: _Optional[_Union[RejectReason, str]] = ..., detail: _Optional[str] = ..., captured_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rejected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source_event_id: _Optional[str] = ...) -> None: ...

class LabelCreated(_message.Message):
    __slots__ = ("label_id", "frame_id", "line_id", "camera_id", "sha256", "label_class", "source", "annotator", "note", "created_at", "prediction")
    LABEL_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    LINE_ID_FIELD_NUMBER: _ClassVar[int]
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    LABEL_CLASS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    ANNOTATOR_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    label_id: str
    frame_id: str
    line_id: str
    camera_id: str
    sha256: str
    label_class: str
    source: LabelSource
    annotator: str
    note: str
    created_at: _timestamp_pb2.Timestamp
    prediction: _common_pb2.Prediction
    def __init__(self, label_id: _Optional[str] = ..., frame_id: _Optional[str] = ..., line_id: _Optional[str] = ..., camera_id: _Optional[str] = ..., sha256: _Optional[str] = ..., label_class: _Optional[str] = ..., source: _Optional[_Union[LabelSource, str]] = ..., annotator: _Optional[str] = ..., note: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., prediction: _Optional[_Union[_common_pb2.Prediction, _Mapping]] = ...) -> None: ...

class DatasetVersioned(_message.Message):
    __slots__ = ("dataset", "version", "parent_version", "manifest", "classes", "class_counts", "split_counts", "line_id", "created_by", "reason", "created_at", "label_check")
    class ClassCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class SplitCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    DATASET_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PARENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    CLASS_COUNTS_FIELD_NUMBER: _ClassVar[int]
    SPLIT_COUNTS_FIELD_NUMBER: _ClassVar[int]
    LINE_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LABEL_CHECK_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    version: str
    parent_version: str
    manifest: _common_pb2.ObjectRef
    classes: _containers.RepeatedScalarFieldContainer[str]
    class_counts: _containers.ScalarMap[str, int]
    split_counts: _containers.ScalarMap[str, int]
    line_id: str
    created_by: str
    reason: str
    created_at: _timestamp_pb2.Timestamp
    label_check: LabelCheck
    def __init__(self, dataset: _Optional[str] = ..., version: _Optional[str] = ..., parent_version: _Optional[str] = ..., manifest: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., classes: _Optional[_Iterable[str]] = ..., class_counts: _Optional[_Mapping[str, int]] = ..., split_counts: _Optional[_Mapping[str, int]] = ..., line_id: _Optional[str] = ..., created_by: _Optional[str] = ..., reason: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., label_check: _Optional[_Union[LabelCheck, _Mapping]] = ...) -> None: ...

class LabelCheck(_message.Message):
    __slots__ = ("checked", "not_checked", "method", "frames_checked", "frames_unchecked", "suspects")
    CHECKED_FIELD_NUMBER: _ClassVar[int]
    NOT_CHECKED_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    FRAMES_CHECKED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_UNCHECKED_FIELD_NUMBER: _ClassVar[int]
    SUSPECTS_FIELD_NUMBER: _ClassVar[int]
    checked: bool
    not_checked: str
    method: str
    frames_checked: int
    frames_unchecked: int
    suspects: _containers.RepeatedCompositeFieldContainer[LabelSuspect]
    def __init__(self, checked: _Optional[bool] = ..., not_checked: _Optional[str] = ..., method: _Optional[str] = ..., frames_checked: _Optional[int] = ..., frames_unchecked: _Optional[int] = ..., suspects: _Optional[_Iterable[_Union[LabelSuspect, _Mapping]]] = ...) -> None: ...

class LabelSuspect(_message.Message):
    __slots__ = ("frame_id", "label_class", "annotator", "suggested_class", "score", "fate", "reviewed_by", "final_class", "flagged_in", "flagged_at")
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_CLASS_FIELD_NUMBER: _ClassVar[int]
    ANNOTATOR_FIELD_NUMBER: _ClassVar[int]
    SUGGESTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    FATE_FIELD_NUMBER: _ClassVar[int]
    REVIEWED_BY_FIELD_NUMBER: _ClassVar[int]
    FINAL_CLASS_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_IN_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_AT_FIELD_NUMBER: _ClassVar[int]
    frame_id: str
    label_class: str
    annotator: str
    suggested_class: str
    score: float
    fate: SuspectFate
    reviewed_by: str
    final_class: str
    flagged_in: str
    flagged_at: _timestamp_pb2.Timestamp
    def __init__(self, frame_id: _Optional[str] = ..., label_class: _Optional[str] = ..., annotator: _Optional[str] = ..., suggested_class: _Optional[str] = ..., score: _Optional[float] = ..., fate: _Optional[_Union[SuspectFate, str]] = ..., reviewed_by: _Optional[str] = ..., final_class: _Optional[str] = ..., flagged_in: _Optional[str] = ..., flagged_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TrainingRequested(_message.Message):
    __slots__ = ("model_name", "dataset", "dataset_version", "reason", "requested_by", "params")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    dataset: str
    dataset_version: str
    reason: str
    requested_by: str
    params: _containers.ScalarMap[str, str]
    def __init__(self, model_name: _Optional[str] = ..., dataset: _Optional[str] = ..., dataset_version: _Optional[str] = ..., reason: _Optional[str] = ..., requested_by: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ModelTrained(_message.Message):
    __slots__ = ("model_name", "run_id", "dataset", "dataset_version", "dataset_sha256", "code_version", "artifact_prefix", "weights", "onnx", "model_card", "classes", "input_size", "test_metrics", "params", "parent_version", "finished_at", "dataset_manifest")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_SHA256_FIELD_NUMBER: _ClassVar[int]
    CODE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    ONNX_FIELD_NUMBER: _ClassVar[int]
    MODEL_CARD_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    TEST_METRICS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    PARENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    DATASET_MANIFEST_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    run_id: str
    dataset: str
    dataset_version: str
    dataset_sha256: str
    code_version: str
    artifact_prefix: str
    weights: _common_pb2.ObjectRef
    onnx: _common_pb2.ObjectRef
    model_card: _common_pb2.ObjectRef
    classes: _containers.RepeatedScalarFieldContainer[str]
    input_size: int
    test_metrics: _common_pb2.EvalMetrics
    params: _containers.ScalarMap[str, str]
    parent_version: str
    finished_at: _timestamp_pb2.Timestamp
    dataset_manifest: _common_pb2.ObjectRef
    def __init__(self, model_name: _Optional[str] = ..., run_id: _Optional[str] = ..., dataset: _Optional[str] = ..., dataset_version: _Optional[str] = ..., dataset_sha256: _Optional[str] = ..., code_version: _Optional[str] = ..., artifact_prefix: _Optional[str] = ..., weights: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., onnx: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., model_card: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., classes: _Optional[_Iterable[str]] = ..., input_size: _Optional[int] = ..., test_metrics: _Optional[_Union[_common_pb2.EvalMetrics, _Mapping]] = ..., params: _Optional[_Mapping[str, str]] = ..., parent_version: _Optional[str] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., dataset_manifest: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ...) -> None: ...

class GateCheck(_message.Message):
    __slots__ = ("name", "candidate", "baseline", "passed", "lower", "upper", "margin", "frames", "outcome", "more_frames_needed", "lacking_class")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    PASSED_FIELD_NUMBER: _ClassVar[int]
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    MARGIN_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    MORE_FRAMES_NEEDED_FIELD_NUMBER: _ClassVar[int]
    LACKING_CLASS_FIELD_NUMBER: _ClassVar[int]
    name: str
    candidate: float
    baseline: float
    passed: bool
    lower: float
    upper: float
    margin: float
    frames: int
    outcome: GateOutcome
    more_frames_needed: int
    lacking_class: str
    def __init__(self, name: _Optional[str] = ..., candidate: _Optional[float] = ..., baseline: _Optional[float] = ..., passed: _Optional[bool] = ..., lower: _Optional[float] = ..., upper: _Optional[float] = ..., margin: _Optional[float] = ..., frames: _Optional[int] = ..., outcome: _Optional[_Union[GateOutcome, str]] = ..., more_frames_needed: _Optional[int] = ..., lacking_class: _Optional[str] = ...) -> None: ...

class GateDecision(_message.Message):
    __slots__ = ("passed", "reason", "baseline_version", "dataset_version", "candidate", "baseline", "checks", "outcome", "confidence")
    PASSED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BASELINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    passed: bool
    reason: str
    baseline_version: str
    dataset_version: str
    candidate: _common_pb2.EvalMetrics
    baseline: _common_pb2.EvalMetrics
    checks: _containers.RepeatedCompositeFieldContainer[GateCheck]
    outcome: GateOutcome
    confidence: float
    def __init__(self, passed: _Optional[bool] = ..., reason: _Optional[str] = ..., baseline_version: _Optional[str] = ..., dataset_version: _Optional[str] = ..., candidate: _Optional[_Union[_common_pb2.EvalMetrics, _Mapping]] = ..., baseline: _Optional[_Union[_common_pb2.EvalMetrics, _Mapping]] = ..., checks: _Optional[_Iterable[_Union[GateCheck, _Mapping]]] = ..., outcome: _Optional[_Union[GateOutcome, str]] = ..., confidence: _Optional[float] = ...) -> None: ...

class ModelRegistered(_message.Message):
    __slots__ = ("model_name", "version", "run_id", "dataset", "dataset_version", "parent_version", "stage", "gate", "onnx", "classes", "input_size", "registered_at", "weights", "dataset_manifest")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    PARENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    ONNX_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    DATASET_MANIFEST_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: str
    run_id: str
    dataset: str
    dataset_version: str
    parent_version: str
    stage: _common_pb2.Stage
    gate: GateDecision
    onnx: _common_pb2.ObjectRef
    classes: _containers.RepeatedScalarFieldContainer[str]
    input_size: int
    registered_at: _timestamp_pb2.Timestamp
    weights: _common_pb2.ObjectRef
    dataset_manifest: _common_pb2.ObjectRef
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ..., run_id: _Optional[str] = ..., dataset: _Optional[str] = ..., dataset_version: _Optional[str] = ..., parent_version: _Optional[str] = ..., stage: _Optional[_Union[_common_pb2.Stage, str]] = ..., gate: _Optional[_Union[GateDecision, _Mapping]] = ..., onnx: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., classes: _Optional[_Iterable[str]] = ..., input_size: _Optional[int] = ..., registered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., weights: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., dataset_manifest: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ...) -> None: ...

class VerificationReport(_message.Message):
    __slots__ = ("samples", "top1_agreement", "max_abs_error", "latency_p50_ms", "latency_p99_ms", "throughput_per_s", "batch_size", "host")
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    TOP1_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_ERROR_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    THROUGHPUT_PER_S_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    samples: int
    top1_agreement: float
    max_abs_error: float
    latency_p50_ms: float
    latency_p99_ms: float
    throughput_per_s: float
    batch_size: int
    host: str
    def __init__(self, samples: _Optional[int] = ..., top1_agreement: _Optional[float] = ..., max_abs_error: _Optional[float] = ..., latency_p50_ms: _Optional[float] = ..., latency_p99_ms: _Optional[float] = ..., throughput_per_s: _Optional[float] = ..., batch_size: _Optional[int] = ..., host: _Optional[str] = ...) -> None: ...

class ModelCompiled(_message.Message):
    __slots__ = ("model_name", "version", "target", "build_id", "status", "reason", "manifest", "signature", "key_id", "artifacts", "verification", "runtime", "precision", "built_at")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    BUILD_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    BUILT_AT_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: str
    target: str
    build_id: str
    status: BuildStatus
    reason: str
    manifest: _common_pb2.ObjectRef
    signature: bytes
    key_id: str
    artifacts: _containers.RepeatedCompositeFieldContainer[_common_pb2.ObjectRef]
    verification: VerificationReport
    runtime: str
    precision: str
    built_at: _timestamp_pb2.Timestamp
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ..., target: _Optional[str] = ..., build_id: _Optional[str] = ..., status: _Optional[_Union[BuildStatus, str]] = ..., reason: _Optional[str] = ..., manifest: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., signature: _Optional[bytes] = ..., key_id: _Optional[str] = ..., artifacts: _Optional[_Iterable[_Union[_common_pb2.ObjectRef, _Mapping]]] = ..., verification: _Optional[_Union[VerificationReport, _Mapping]] = ..., runtime: _Optional[str] = ..., precision: _Optional[str] = ..., built_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class LineDeployment(_message.Message):
    __slots__ = ("line_id", "triton_model", "production_version", "canary_version", "canary_share")
    LINE_ID_FIELD_NUMBER: _ClassVar[int]
    TRITON_MODEL_FIELD_NUMBER: _ClassVar[int]
    PRODUCTION_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANARY_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANARY_SHARE_FIELD_NUMBER: _ClassVar[int]
    line_id: str
    triton_model: str
    production_version: str
    canary_version: str
    canary_share: float
    def __init__(self, line_id: _Optional[str] = ..., triton_model: _Optional[str] = ..., production_version: _Optional[str] = ..., canary_version: _Optional[str] = ..., canary_share: _Optional[float] = ...) -> None: ...

class ModelPromoted(_message.Message):
    __slots__ = ("model_name", "version", "stage", "previous_stage", "actor", "reason", "deployments", "classes", "promoted_at")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_STAGE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_AT_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: str
    stage: _common_pb2.Stage
    previous_stage: _common_pb2.Stage
    actor: str
    reason: str
    deployments: _containers.RepeatedCompositeFieldContainer[LineDeployment]
    classes: _containers.RepeatedScalarFieldContainer[str]
    promoted_at: _timestamp_pb2.Timestamp
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ..., stage: _Optional[_Union[_common_pb2.Stage, str]] = ..., previous_stage: _Optional[_Union[_common_pb2.Stage, str]] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., deployments: _Optional[_Iterable[_Union[LineDeployment, _Mapping]]] = ..., classes: _Optional[_Iterable[str]] = ..., promoted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RolloutStage(_message.Message):
    __slots__ = ("name", "gateway_ids", "max_gateways")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_IDS_FIELD_NUMBER: _ClassVar[int]
    MAX_GATEWAYS_FIELD_NUMBER: _ClassVar[int]
    name: str
    gateway_ids: _containers.RepeatedScalarFieldContainer[str]
    max_gateways: int
    def __init__(self, name: _Optional[str] = ..., gateway_ids: _Optional[_Iterable[str]] = ..., max_gateways: _Optional[int] = ...) -> None: ...

class EdgeRollout(_message.Message):
    __slots__ = ("rollout_id", "fleet", "model_name", "version", "target", "manifest_url", "manifest_sha256", "artifacts", "signature", "key_id", "stages", "created_at")
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    FLEET_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_URL_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    rollout_id: str
    fleet: str
    model_name: str
    version: str
    target: str
    manifest_url: str
    manifest_sha256: str
    artifacts: _containers.RepeatedCompositeFieldContainer[_common_pb2.ObjectRef]
    signature: bytes
    key_id: str
    stages: _containers.RepeatedCompositeFieldContainer[RolloutStage]
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, rollout_id: _Optional[str] = ..., fleet: _Optional[str] = ..., model_name: _Optional[str] = ..., version: _Optional[str] = ..., target: _Optional[str] = ..., manifest_url: _Optional[str] = ..., manifest_sha256: _Optional[str] = ..., artifacts: _Optional[_Iterable[_Union[_common_pb2.ObjectRef, _Mapping]]] = ..., signature: _Optional[bytes] = ..., key_id: _Optional[str] = ..., stages: _Optional[_Iterable[_Union[RolloutStage, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DriftDetected(_message.Message):
    __slots__ = ("drift_id", "line_id", "camera_id", "model_name", "model_version", "kind", "feature", "score", "threshold", "reference", "current", "detail", "detected_at")
    DRIFT_ID_FIELD_NUMBER: _ClassVar[int]
    LINE_ID_FIELD_NUMBER: _ClassVar[int]
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    DETECTED_AT_FIELD_NUMBER: _ClassVar[int]
    drift_id: str
    line_id: str
    camera_id: str
    model_name: str
    model_version: str
    kind: DriftKind
    feature: str
    score: float
    threshold: float
    reference: _common_pb2.TimeWindow
    current: _common_pb2.TimeWindow
    detail: str
    detected_at: _timestamp_pb2.Timestamp
    def __init__(self, drift_id: _Optional[str] = ..., line_id: _Optional[str] = ..., camera_id: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., kind: _Optional[_Union[DriftKind, str]] = ..., feature: _Optional[str] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., reference: _Optional[_Union[_common_pb2.TimeWindow, _Mapping]] = ..., current: _Optional[_Union[_common_pb2.TimeWindow, _Mapping]] = ..., detail: _Optional[str] = ..., detected_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("alert_id", "kind", "state", "line_id", "camera_id", "model_name", "model_version", "feature", "score", "threshold", "clear_below", "detail", "raised_at", "changed_at", "drift_id")
    ALERT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LINE_ID_FIELD_NUMBER: _ClassVar[int]
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    CLEAR_BELOW_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    RAISED_AT_FIELD_NUMBER: _ClassVar[int]
    CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    DRIFT_ID_FIELD_NUMBER: _ClassVar[int]
    alert_id: str
    kind: AlertKind
    state: AlertState
    line_id: str
    camera_id: str
    model_name: str
    model_version: str
    feature: str
    score: float
    threshold: float
    clear_below: float
    detail: str
    raised_at: _timestamp_pb2.Timestamp
    changed_at: _timestamp_pb2.Timestamp
    drift_id: str
    def __init__(self, alert_id: _Optional[str] = ..., kind: _Optional[_Union[AlertKind, str]] = ..., state: _Optional[_Union[AlertState, str]] = ..., line_id: _Optional[str] = ..., camera_id: _Optional[str] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., feature: _Optional[str] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., clear_below: _Optional[float] = ..., detail: _Optional[str] = ..., raised_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., changed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., drift_id: _Optional[str] = ...) -> None: ...
