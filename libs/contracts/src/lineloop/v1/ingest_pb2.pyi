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

class ImageToUpload(_message.Message):
    __slots__ = ("sha256", "size_bytes", "content_type")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size_bytes: int
    content_type: str
    def __init__(self, sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., content_type: _Optional[str] = ...) -> None: ...

class RequestUploadsRequest(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[ImageToUpload]
    def __init__(self, images: _Optional[_Iterable[_Union[ImageToUpload, _Mapping]]] = ...) -> None: ...

class PresignedUpload(_message.Message):
    __slots__ = ("image_ref", "url", "already_stored", "expires_at")
    IMAGE_REF_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    ALREADY_STORED_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    image_ref: _common_pb2.ObjectRef
    url: str
    already_stored: bool
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, image_ref: _Optional[_Union[_common_pb2.ObjectRef, _Mapping]] = ..., url: _Optional[str] = ..., already_stored: _Optional[bool] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RequestUploadsResponse(_message.Message):
    __slots__ = ("uploads",)
    UPLOADS_FIELD_NUMBER: _ClassVar[int]
    uploads: _containers.RepeatedCompositeFieldContainer[PresignedUpload]
    def __init__(self, uploads: _Optional[_Iterable[_Union[PresignedUpload, _Mapping]]] = ...) -> None: ...

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
