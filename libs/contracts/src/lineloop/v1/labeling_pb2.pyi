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

class Task(_message.Message):
    __slots__ = ("task_id", "lease_id", "frame_id", "line_id", "camera_id", "image", "image_url", "prediction", "priority", "why", "lease_expires_at")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    LINE_ID_FIELD_NUMBER: _ClassVar[int]
    CAMERA_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_URL_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    WHY_FIELD_NUMBER: _ClassVar[int]
    LEASE_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    lease_id: str
    frame_id: str
    line_id: str
    camera_id: str
    image: _common_pb2.ObjectRef
    image_url: str
    prediction: _common_pb2.Prediction
    priority: float
    why: str
    lease_expires_at: _timestamp_pb2.Timestamp
    def __init__(self, task_id: _Optional[str] = ..., lease_id: _Optional[str] = ..., frame_id: _Optional[str] = ..., line_id: _Optional[str] = ..., camera_id: _Optional[str] = ..., image: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., image_url: _Optional[str] = ..., prediction: _Optional[_Union[_common_pb2.Prediction, _Mapping]] = ..., priority: _Optional[float] = ..., why: _Optional[str] = ..., lease_expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class NextTasksRequest(_message.Message):
    __slots__ = ("annotator", "line_id", "max_tasks")
    ANNOTATOR_FIELD_NUMBER: _ClassVar[int]
    LINE_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_TASKS_FIELD_NUMBER: _ClassVar[int]
    annotator: str
    line_id: str
    max_tasks: int
    def __init__(self, annotator: _Optional[str] = ..., line_id: _Optional[str] = ..., max_tasks: _Optional[int] = ...) -> None: ...

class NextTasksResponse(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    def __init__(self, tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ...) -> None: ...

class SubmitLabelRequest(_message.Message):
    __slots__ = ("lease_id", "frame_id", "label_class", "annotator", "note")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_CLASS_FIELD_NUMBER: _ClassVar[int]
    ANNOTATOR_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    frame_id: str
    label_class: str
    annotator: str
    note: str
    def __init__(self, lease_id: _Optional[str] = ..., frame_id: _Optional[str] = ..., label_class: _Optional[str] = ..., annotator: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class SubmitLabelResponse(_message.Message):
    __slots__ = ("label", "duplicate")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    label: _events_pb2.LabelCreated
    duplicate: bool
    def __init__(self, label: _Optional[_Union[_events_pb2.LabelCreated, _Mapping]] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class GetFrameLabelsRequest(_message.Message):
    __slots__ = ("frame_id",)
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    frame_id: str
    def __init__(self, frame_id: _Optional[str] = ...) -> None: ...

class GetFrameLabelsResponse(_message.Message):
    __slots__ = ("history", "effective")
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_FIELD_NUMBER: _ClassVar[int]
    history: _containers.RepeatedCompositeFieldContainer[_events_pb2.LabelCreated]
    effective: _events_pb2.LabelCreated
    def __init__(self, history: _Optional[_Iterable[_Union[_events_pb2.LabelCreated, _Mapping]]] = ..., effective: _Optional[_Union[_events_pb2.LabelCreated, _Mapping]] = ...) -> None: ...

class CutDatasetRequest(_message.Message):
    __slots__ = ("dataset", "line_id", "requested_by", "reason")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    LINE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    line_id: str
    requested_by: str
    reason: str
    def __init__(self, dataset: _Optional[str] = ..., line_id: _Optional[str] = ..., requested_by: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class GetDatasetRequest(_message.Message):
    __slots__ = ("dataset", "version")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    version: str
    def __init__(self, dataset: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    def __init__(self, dataset: _Optional[str] = ...) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[_events_pb2.DatasetVersioned]
    def __init__(self, versions: _Optional[_Iterable[_Union[_events_pb2.DatasetVersioned, _Mapping]]] = ...) -> None: ...

class ExportLabelStudioRequest(_message.Message):
    __slots__ = ("line_id", "max_tasks", "only_unlabelled")
    LINE_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_TASKS_FIELD_NUMBER: _ClassVar[int]
    ONLY_UNLABELLED_FIELD_NUMBER: _ClassVar[int]
    line_id: str
    max_tasks: int
    only_unlabelled: bool
    def __init__(self, line_id: _Optional[str] = ..., max_tasks: _Optional[int] = ..., only_unlabelled: _Optional[bool] = ...) -> None: ...

class ExportLabelStudioResponse(_message.Message):
    __slots__ = ("tasks_json", "count")
    TASKS_JSON_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    tasks_json: bytes
    count: int
    def __init__(self, tasks_json: _Optional[bytes] = ..., count: _Optional[int] = ...) -> None: ...

class ImportLabelStudioRequest(_message.Message):
    __slots__ = ("export_json",)
    EXPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    export_json: bytes
    def __init__(self, export_json: _Optional[bytes] = ...) -> None: ...

class ImportLabelStudioResponse(_message.Message):
    __slots__ = ("imported", "skipped")
    IMPORTED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    imported: int
    skipped: int
    def __init__(self, imported: _Optional[int] = ..., skipped: _Optional[int] = ...) -> None: ...
