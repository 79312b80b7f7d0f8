"""Ingest settings: `LINELOOP_INGEST_*` (shared addresses: `LINELOOP_*`)."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from lineloop.contracts.catalogue import bucket
from lineloop.runtime import ServiceSettings, service_config


class IngestSettings(ServiceSettings):
    service_name: ClassVar[str] = "ingest"
    model_config = service_config("ingest")

    frames_bucket: str = bucket("frames")
    # Buckets a gateway may upload to and reference from `image_ref` (comma-separated).
    upload_buckets: Annotated[list[str], NoDecode] = [bucket("frames")]
    # Known line ids (comma-separated); empty: any line is accepted.
    lines: Annotated[list[str], NoDecode] = []
    # The inline image limit is no setting: it is lineloop.contracts.topics.MAX_INLINE_IMAGE_BYTES,
    # which the topics' max.message.bytes is derived from.
    max_image_bytes: int = 16 * 1024 * 1024
    max_image_side: int = 8192
    max_image_pixels: int = 40_000_000
    # Pixels of all the frames decoded at once: a frame holds its pixels (read from its
    # header, before decoding) from decode until it is scored, and waits while others hold
    # the rest. A decoded frame takes ~4 bytes a pixel (Pillow's RGB), up to 8 while a
    # greyscale/CMYK/RGBA image converts, and the C allocator may keep a freed frame per
    # decode thread: 48 MP (one frame at the cap) measured 446 MiB peak RSS for a burst of
    # 8 frames of 39 MP on 2 decode threads (ingest idle: 119 MiB; bench_decode_memory.py),
    # inside the 1 GiB pod limit. The pixel cap may not exceed the budget.
    decode_pixel_budget: int = 48_000_000
    # Gateway clocks drift a little; beyond this a capture time is refused.
    max_clock_skew_s: float = 300.0

    triton_timeout_s: float = 5.0
    # Frames scored together in one Triton request (capped by the model's max_batch_size),
    # and how long the first waits for company.
    score_max_batch: int = 32
    score_max_delay_ms: float = 2.0
    # How often a replica re-reads the serving picture other replicas may have recorded.
    deployment_refresh_s: float = 2.0
    # Frames of one fetched batch prepared (fetched, decoded, stored, scored) at once.
    max_concurrent_frames: int = 64
    presigned_url_ttl_s: int = 900
    # RequestUploads: how long a gateway's presigned PUT stays valid, how many images one
    # request may ask for, and the S3 address gateways reach the store at, if not the one this
    # service uses (the URL is signed for that host; empty: LINELOOP_S3_ENDPOINT).
    upload_url_ttl_s: int = Field(default=300, gt=0, le=3600)
    max_uploads_per_request: int = Field(default=256, gt=0)
    upload_endpoint: str = ""

    @model_validator(mode="after")
    def _a_frame_at_the_cap_fits_the_budget(self) -> IngestSettings:
        if self.max_image_pixels > self.decode_pixel_budget:
            raise ValueError(
                f"max_image_pixels ({self.max_image_pixels}) is more than decode_pixel_budget "
                f"({self.decode_pixel_budget}): frames between the two would pass the checks and never decode"
            )
        return self

    @field_validator("lines", "upload_buckets", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value
