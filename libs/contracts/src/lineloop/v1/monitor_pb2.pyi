import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from lineloop.v1 import common_pb2 as _common_pb2
from lineloop.v1 import events_pb2 as _events_pb2
from lineloop.v1 import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetModelHealthRequest(_message.Message):
    __slots__ = ("line_id", "model_name")
    LINE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    line_id: str
    model_name: str
    def __init__(self, line_id: _Optional[str] = ..., model_name: _Optional[str] = ...) -> None: ...

class VersionHealth(_message.Message):
    __slots__ = ("model_version", "frames_scored", "frames_labelled", "live_accuracy", "class_mix", "mean_confidence")
    class ClassMixEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FRAMES_SCORED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_LABELLED_FIELD_NUMBER: _ClassVar[int]
    LIVE_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    CLASS_MIX_FIELD_NUMBER: _ClassVar[int]
    MEAN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    frames_scored: int
    frames_labelled: int
    live_accuracy: float
    class_mix: _containers.ScalarMap[str, float]
    mean_confidence: float
    def __init__(self, model_version: _Optional[str] = ..., frames_scored: _Optional[int] = ..., frames_labelled: _Optional[int] = ..., live_accuracy: _Optional[float] = ..., class_mix: _Optional[_Mapping[str, float]] = ..., mean_confidence: _Optional[float] = ...) -> None: ...

class ModelHealth(_message.Message):
    __slots__ = ("line_id", "model_name", "versions", "frames_ingested", "frames_rejected", "reject_reasons", "drift_active", "window", "scoring", "active_alerts")
    class RejectReasonsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    LINE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    FRAMES_INGESTED_FIELD_NUMBER: _ClassVar[int]
    FRAMES_REJECTED_FIELD_NUMBER: _ClassVar[int]
    REJECT_REASONS_FIELD_NUMBER: _ClassVar[int]
    DRIFT_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    SCORING_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_ALERTS_FIELD_NUMBER: _ClassVar[int]
    line_id: str
    model_name: str
    versions: _containers.RepeatedCompositeFieldContainer[VersionHealth]
    frames_ingested: int
    frames_rejected: int
    reject_reasons: _containers.ScalarMap[str, int]
    drift_active: bool
    window: _common_pb2.TimeWindow
    scoring: ScoringHealth
    active_alerts: _containers.RepeatedCompositeFieldContainer[_events_pb2.Alert]
    def __init__(self, line_id: _Optional[str] = ..., model_name: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[VersionHealth, _Mapping]]] = ..., frames_ingested: _Optional[int] = ..., frames_rejected: _Optional[int] = ..., reject_reasons: _Optional[_Mapping[str, int]] = ..., drift_active: _Optional[bool] = ..., window: _Optional[_Union[_common_pb2.TimeWindow, _Mapping]] = ..., scoring: _Optional[_Union[ScoringHealth, _Mapping]] = ..., active_alerts: _Optional[_Iterable[_Union[_events_pb2.Alert, _Mapping]]] = ...) -> None: ...

class ScoringHealth(_message.Message):
    __slots__ = ("outage", "unscored_share", "threshold", "window_frames", "outage_since", "frames_unscored", "last_missing_reason")
    OUTAGE_FIELD_NUMBER: _ClassVar[int]
    UNSCORED_SHARE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FRAMES_FIELD_NUMBER: _ClassVar[int]
    OUTAGE_SINCE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_UNSCORED_FIELD_NUMBER: _ClassVar[int]
    LAST_MISSING_REASON_FIELD_NUMBER: _ClassVar[int]
    outage: bool
    unscored_share: float
    threshold: float
    window_frames: int
    outage_since: _timestamp_pb2.Timestamp
    frames_unscored: int
    last_missing_reason: str
    def __init__(self, outage: _Optional[bool] = ..., unscored_share: _Optional[float] = ..., threshold: _Optional[float] = ..., window_frames: _Optional[int] = ..., outage_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., frames_unscored: _Optional[int] = ..., last_missing_reason: _Optional[str] = ...) -> None: ...

class GetDriftReportRequest(_message.Message):
    __slots__ = ("line_id",)
    LINE_ID_FIELD_NUMBER: _ClassVar[int]
    line_id: str
    def __init__(self, line_id: _Optional[str] = ...) -> None: ...

class FeatureDrift(_message.Message):
    __slots__ = ("feature", "score", "threshold", "reference_mean", "current_mean", "drifted")
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_MEAN_FIELD_NUMBER: _ClassVar[int]
    CURRENT_MEAN_FIELD_NUMBER: _ClassVar[int]
    DRIFTED_FIELD_NUMBER: _ClassVar[int]
    feature: str
    score: float
    threshold: float
    reference_mean: float
    current_mean: float
    drifted: bool
    def __init__(self, feature: _Optional[str] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., reference_mean: _Optional[float] = ..., current_mean: _Optional[float] = ..., drifted: _Optional[bool] = ...) -> None: ...

class DriftReport(_message.Message):
    __slots__ = ("line_id", "reference", "current", "features", "recent", "generated_at")
    LINE_ID_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    RECENT_FIELD_NUMBER: _ClassVar[int]
    GENERATED_AT_FIELD_NUMBER: _ClassVar[int]
    line_id: str
    reference: _common_pb2.TimeWindow
    current: _common_pb2.TimeWindow
    features: _containers.RepeatedCompositeFieldContainer[FeatureDrift]
    recent: _containers.RepeatedCompositeFieldContainer[_events_pb2.DriftDetected]
    generated_at: _timestamp_pb2.Timestamp
    def __init__(self, line_id: _Optional[str] = ..., reference: _Optional[_Union[_common_pb2.TimeWindow, _Mapping]] = ..., current: _Optional[_Union[_common_pb2.TimeWindow, _Mapping]] = ..., features: _Optional[_Iterable[_Union[FeatureDrift, _Mapping]]] = ..., recent: _Optional[_Iterable[_Union[_events_pb2.DriftDetected, _Mapping]]] = ..., generated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WatchAlertsRequest(_message.Message):
    __slots__ = ("line_id",)
    LINE_ID_FIELD_NUMBER: _ClassVar[int]
    line_id: str
    def __init__(self, line_id: _Optional[str] = ...) -> None: ...
