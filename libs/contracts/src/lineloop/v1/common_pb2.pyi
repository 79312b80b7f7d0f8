import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PredictionSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PREDICTION_SOURCE_UNSPECIFIED: _ClassVar[PredictionSource]
    PREDICTION_SOURCE_CLOUD: _ClassVar[PredictionSource]
    PREDICTION_SOURCE_EDGE: _ClassVar[PredictionSource]

class PredictionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PREDICTION_STATUS_UNSPECIFIED: _ClassVar[PredictionStatus]
    PREDICTION_STATUS_OK: _ClassVar[PredictionStatus]
    PREDICTION_STATUS_MISSING: _ClassVar[PredictionStatus]

class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_UNSPECIFIED: _ClassVar[Stage]
    STAGE_CANDIDATE: _ClassVar[Stage]
    STAGE_STAGING: _ClassVar[Stage]
    STAGE_PRODUCTION: _ClassVar[Stage]
    STAGE_ARCHIVED: _ClassVar[Stage]
    STAGE_REJECTED: _ClassVar[Stage]
PREDICTION_SOURCE_UNSPECIFIED: PredictionSource
PREDICTION_SOURCE_CLOUD: PredictionSource
PREDICTION_SOURCE_EDGE: PredictionSource
PREDICTION_STATUS_UNSPECIFIED: PredictionStatus
PREDICTION_STATUS_OK: PredictionStatus
PREDICTION_STATUS_MISSING: PredictionStatus
STAGE_UNSPECIFIED: Stage
STAGE_CANDIDATE: Stage
STAGE_STAGING: Stage
STAGE_PRODUCTION: Stage
STAGE_ARCHIVED: Stage
STAGE_REJECTED: Stage

class Prediction(_message.Message):
    __slots__ = ("status", "missing_reason", "source", "model_name", "model_version", "predicted_class", "scores", "embedding", "latency_ms", "canary")
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MISSING_REASON_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    CANARY_FIELD_NUMBER: _ClassVar[int]
    status: PredictionStatus
    missing_reason: str
    source: PredictionSource
    model_name: str
    model_version: str
    predicted_class: str
    scores: _containers.ScalarMap[str, float]
    embedding: _containers.RepeatedScalarFieldContainer[float]
    latency_ms: float
    canary: bool
    def __init__(self, status: _Optional[_Union[PredictionStatus, str]] = ..., missing_reason: _Optional[str] = ..., source: _Optional[_Union[PredictionSource, str]] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., predicted_class: _Optional[str] = ..., scores: _Optional[_Mapping[str, float]] = ..., embedding: _Optional[_Iterable[float]] = ..., latency_ms: _Optional[float] = ..., canary: _Optional[bool] = ...) -> None: ...

class QualityStats(_message.Message):
    __slots__ = ("brightness_mean", "brightness_std", "contrast", "sharpness", "mean_r", "mean_g", "mean_b", "saturation_share")
    BRIGHTNESS_MEAN_FIELD_NUMBER: _ClassVar[int]
    BRIGHTNESS_STD_FIELD_NUMBER: _ClassVar[int]
    CONTRAST_FIELD_NUMBER: _ClassVar[int]
    SHARPNESS_FIELD_NUMBER: _ClassVar[int]
    MEAN_R_FIELD_NUMBER: _ClassVar[int]
    MEAN_G_FIELD_NUMBER: _ClassVar[int]
    MEAN_B_FIELD_NUMBER: _ClassVar[int]
    SATURATION_SHARE_FIELD_NUMBER: _ClassVar[int]
    brightness_mean: float
    brightness_std: float
    contrast: float
    sharpness: float
    mean_r: float
    mean_g: float
    mean_b: float
    saturation_share: float
    def __init__(self, brightness_mean: _Optional[float] = ..., brightness_std: _Optional[float] = ..., contrast: _Optional[float] = ..., sharpness: _Optional[float] = ..., mean_r: _Optional[float] = ..., mean_g: _Optional[float] = ..., mean_b: _Optional[float] = ..., saturation_share: _Optional[float] = ...) -> None: ...

class ObjectRef(_message.Message):
    __slots__ = ("bucket", "key", "sha256", "size_bytes")
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    bucket: str
    key: str
    sha256: str
    size_bytes: int
    def __init__(self, bucket: _Optional[str] = ..., key: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...

class ConfusionRow(_message.Message):
    __slots__ = ("true_class", "predicted")
    class PredictedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    TRUE_CLASS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_FIELD_NUMBER: _ClassVar[int]
    true_class: str
    predicted: _containers.ScalarMap[str, int]
    def __init__(self, true_class: _Optional[str] = ..., predicted: _Optional[_Mapping[str, int]] = ...) -> None: ...

class EvalMetrics(_message.Message):
    __slots__ = ("samples", "accuracy", "ok_false_positive_rate", "precision", "recall", "confusion", "loss")
    class PrecisionEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class RecallEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    OK_FALSE_POSITIVE_RATE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    CONFUSION_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    samples: int
    accuracy: float
    ok_false_positive_rate: float
    precision: _containers.ScalarMap[str, float]
    recall: _containers.ScalarMap[str, float]
    confusion: _containers.RepeatedCompositeFieldContainer[ConfusionRow]
    loss: float
    def __init__(self, samples: _Optional[int] = ..., accuracy: _Optional[float] = ..., ok_false_positive_rate: _Optional[float] = ..., precision: _Optional[_Mapping[str, float]] = ..., recall: _Optional[_Mapping[str, float]] = ..., confusion: _Optional[_Iterable[_Union[ConfusionRow, _Mapping]]] = ..., loss: _Optional[float] = ...) -> None: ...

class TimeWindow(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    def __init__(self, start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
