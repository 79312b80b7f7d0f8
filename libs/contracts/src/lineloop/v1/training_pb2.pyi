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

class RunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATE_UNSPECIFIED: _ClassVar[RunState]
    RUN_STATE_QUEUED: _ClassVar[RunState]
    RUN_STATE_RUNNING: _ClassVar[RunState]
    RUN_STATE_SUCCEEDED: _ClassVar[RunState]
    RUN_STATE_FAILED: _ClassVar[RunState]
    RUN_STATE_CANCELLED: _ClassVar[RunState]
RUN_STATE_UNSPECIFIED: RunState
RUN_STATE_QUEUED: RunState
RUN_STATE_RUNNING: RunState
RUN_STATE_SUCCEEDED: RunState
RUN_STATE_FAILED: RunState
RUN_STATE_CANCELLED: RunState

class EpochMetrics(_message.Message):
    __slots__ = ("epoch", "train_loss", "val_loss", "val_accuracy", "frames_per_s", "data_share")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    VAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    VAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    FRAMES_PER_S_FIELD_NUMBER: _ClassVar[int]
    DATA_SHARE_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    frames_per_s: float
    data_share: float
    def __init__(self, epoch: _Optional[int] = ..., train_loss: _Optional[float] = ..., val_loss: _Optional[float] = ..., val_accuracy: _Optional[float] = ..., frames_per_s: _Optional[float] = ..., data_share: _Optional[float] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("run_id", "model_name", "dataset", "dataset_version", "dataset_sha256", "state", "code_version", "params", "epochs", "test_metrics", "artifact_prefix", "error", "host", "reason", "created_at", "started_at", "finished_at")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_SHA256_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CODE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    TEST_METRICS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    model_name: str
    dataset: str
    dataset_version: str
    dataset_sha256: str
    state: RunState
    code_version: str
    params: _containers.ScalarMap[str, str]
    epochs: _containers.RepeatedCompositeFieldContainer[EpochMetrics]
    test_metrics: _common_pb2.EvalMetrics
    artifact_prefix: str
    error: str
    host: str
    reason: str
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    def __init__(self, run_id: _Optional[str] = ..., model_name: _Optional[str] = ..., dataset: _Optional[str] = ..., dataset_version: _Optional[str] = ..., dataset_sha256: _Optional[str] = ..., state: _Optional[_Union[RunState, str]] = ..., code_version: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., epochs: _Optional[_Iterable[_Union[EpochMetrics, _Mapping]]] = ..., test_metrics: _Optional[_Union[_common_pb2.EvalMetrics, _Mapping]] = ..., artifact_prefix: _Optional[str] = ..., error: _Optional[str] = ..., host: _Optional[str] = ..., reason: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RunProgress(_message.Message):
    __slots__ = ("run", "latest")
    RUN_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    run: Run
    latest: EpochMetrics
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ..., latest: _Optional[_Union[EpochMetrics, _Mapping]] = ...) -> None: ...

class StartRunRequest(_message.Message):
    __slots__ = ("model_name", "dataset", "dataset_version", "params", "requested_by")
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
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    dataset: str
    dataset_version: str
    params: _containers.ScalarMap[str, str]
    requested_by: str
    def __init__(self, model_name: _Optional[str] = ..., dataset: _Optional[str] = ..., dataset_version: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., requested_by: _Optional[str] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("model_name", "limit")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    limit: int
    def __init__(self, model_name: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[Run]
    def __init__(self, runs: _Optional[_Iterable[_Union[Run, _Mapping]]] = ...) -> None: ...

class CancelRunRequest(_message.Message):
    __slots__ = ("run_id", "reason")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    reason: str
    def __init__(self, run_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
