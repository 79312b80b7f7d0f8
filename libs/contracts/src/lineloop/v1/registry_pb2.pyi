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

class StageTransition(_message.Message):
    __slots__ = ("from_stage", "to_stage", "actor", "reason", "at", "metrics")
    FROM_STAGE_FIELD_NUMBER: _ClassVar[int]
    TO_STAGE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    from_stage: _common_pb2.Stage
    to_stage: _common_pb2.Stage
    actor: str
    reason: str
    at: _timestamp_pb2.Timestamp
    metrics: _common_pb2.EvalMetrics
    def __init__(self, from_stage: _Optional[_Union[_common_pb2.Stage, str]] = ..., to_stage: _Optional[_Union[_common_pb2.Stage, str]] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., metrics: _Optional[_Union[_common_pb2.EvalMetrics, _Mapping]] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("model_name", "version", "stage", "aliases", "run_id", "dataset", "dataset_version", "parent_version", "gate", "history", "builds", "canary_share", "frames_served", "registered_at", "hold_reason", "held_since", "onnx", "weights")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    PARENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    GATE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    BUILDS_FIELD_NUMBER: _ClassVar[int]
    CANARY_SHARE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_SERVED_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    HOLD_REASON_FIELD_NUMBER: _ClassVar[int]
    HELD_SINCE_FIELD_NUMBER: _ClassVar[int]
    ONNX_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: str
    stage: _common_pb2.Stage
    aliases: _containers.RepeatedScalarFieldContainer[str]
    run_id: str
    dataset: str
    dataset_version: str
    parent_version: str
    gate: _events_pb2.GateDecision
    history: _containers.RepeatedCompositeFieldContainer[StageTransition]
    builds: _containers.RepeatedCompositeFieldContainer[_events_pb2.ModelCompiled]
    canary_share: float
    frames_served: int
    registered_at: _timestamp_pb2.Timestamp
    hold_reason: str
    held_since: _timestamp_pb2.Timestamp
    onnx: _common_pb2.ObjectRef
    weights: _common_pb2.ObjectRef
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ..., stage: _Optional[_Union[_common_pb2.Stage, str]] = ..., aliases: _Optional[_Iterable[str]] = ..., run_id: _Optional[str] = ..., dataset: _Optional[str] = ..., dataset_version: _Optional[str] = ..., parent_version: _Optional[str] = ..., gate: _Optional[_Union[_events_pb2.GateDecision, _Mapping]] = ..., history: _Optional[_Iterable[_Union[StageTransition, _Mapping]]] = ..., builds: _Optional[_Iterable[_Union[_events_pb2.ModelCompiled, _Mapping]]] = ..., canary_share: _Optional[float] = ..., frames_served: _Optional[int] = ..., registered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., hold_reason: _Optional[str] = ..., held_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., onnx: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., weights: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ("model_name", "stage")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    stage: _common_pb2.Stage
    def __init__(self, model_name: _Optional[str] = ..., stage: _Optional[_Union[_common_pb2.Stage, str]] = ...) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    def __init__(self, versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ...) -> None: ...

class GetVersionRequest(_message.Message):
    __slots__ = ("model_name", "version")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: str
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class PromoteRequest(_message.Message):
    __slots__ = ("model_name", "version", "to_stage", "actor", "reason")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_STAGE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: str
    to_stage: _common_pb2.Stage
    actor: str
    reason: str
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ..., to_stage: _Optional[_Union[_common_pb2.Stage, str]] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("model_name", "actor", "reason")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    actor: str
    reason: str
    def __init__(self, model_name: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SetCanaryRequest(_message.Message):
    __slots__ = ("model_name", "version", "share", "actor", "reason")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    version: str
    share: float
    actor: str
    reason: str
    def __init__(self, model_name: _Optional[str] = ..., version: _Optional[str] = ..., share: _Optional[float] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
