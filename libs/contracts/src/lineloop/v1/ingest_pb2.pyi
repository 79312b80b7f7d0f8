from lineloop.v1 import events_pb2 as _events_pb2
from lineloop.v1 import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UploadFrameRequest(_message.Message):
    __slots__ = ("frame",)
    FRAME_FIELD_NUMBER: _ClassVar[int]
    frame: _events_pb2.FrameCaptured
    def __init__(self, frame: _Optional[_Union[_events_pb2.FrameCaptured, _Mapping]] = ...) -> None: ...

class UploadResult(_message.Message):
    __slots__ = ("frame_id", "accepted", "reason", "detail", "duplicate")
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    frame_id: str
    accepted: bool
    reason: _events_pb2.RejectReason
    detail: str
    duplicate: bool
    def __init__(self, frame_id: _Optional[str] = ..., accepted: _Optional[bool] = ..., reason: _Optional[_Union[_events_pb2.RejectReason, str]] = ..., detail: _Optional[str] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class UploadFramesResponse(_message.Message):
    __slots__ = ("accepted", "rejected", "duplicates", "results")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    rejected: int
    duplicates: int
    results: _containers.RepeatedCompositeFieldContainer[UploadResult]
    def __init__(self, accepted: _Optional[int] = ..., rejected: _Optional[int] = ..., duplicates: _Optional[int] = ..., results: _Optional[_Iterable[_Union[UploadResult, _Mapping]]] = ...) -> None: ...

class GetFrameRequest(_message.Message):
    __slots__ = ("frame_id",)
    FRAME_ID_FIELD_NUMBER: _ClassVar[int]
    frame_id: str
    def __init__(self, frame_id: _Optional[str] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("frame", "presigned_url")
    FRAME_FIELD_NUMBER: _ClassVar[int]
    PRESIGNED_URL_FIELD_NUMBER: _ClassVar[int]
    frame: _events_pb2.FrameIngested
    presigned_url: str
    def __init__(self, frame: _Optional[_Union[_events_pb2.FrameIngested, _Mapping]] = ..., presigned_url: _Optional[str] = ...) -> None: ...
