"""A dataset version's splits, read from where an event says its manifest is.

The one way training, the registry's gate and the compiler turn a dataset version into
frames: the manifest is read through the `ObjectRef` its event carries (labeling owns the
bucket and the key; no consumer rebuilds them), model-made labels are dropped outside the
train split (they may train, never judge), and frames come through the content-addressed
`FrameCache`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from lineloop.model.manifest import SPLITS, FrameCache, ManifestEntry, ManifestError, parse_manifest
from lineloop.model.preprocess import frame_input
from lineloop.storage.objects import ObjectStore

MODEL_LABEL_SOURCE = "model"


class Ref(Protocol):
    """What is needed of an ObjectRef (the proto, or storage's StoredObject)."""

    bucket: str
    key: str
    sha256: str


def _location(ref: Ref) -> str:
    if not ref.bucket or not ref.key:
        raise ManifestError("no manifest reference (bucket and key are empty)")
    return f"{ref.bucket}/{ref.key}"


class DatasetSplits:
    """The usable entries of one dataset version's manifest, by split."""

    def __init__(self, entries: list[ManifestEntry], location: str = "") -> None:
        self.location = location
        # Model-made labels may train but never judge: val and test keep human labels only.
        self.entries = [e for e in entries if e.split == "train" or e.label_source != MODEL_LABEL_SOURCE]

    @classmethod
    def parse(cls, data: bytes, location: str = "") -> DatasetSplits:
        try:
            return cls(parse_manifest(data), location)
        except ManifestError as err:
            raise ManifestError(f"manifest {location}: {err}" if location else str(err)) from err

    @classmethod
    def read(cls, store: ObjectStore, ref: Ref) -> DatasetSplits:
        """The manifest at `ref`, checked against its sha256 when the ref has one."""
        location = _location(ref)
        return cls.parse(store.get_bytes(ref.bucket, ref.key, expected_sha256=ref.sha256 or None), location)

    @classmethod
    async def aread(cls, store: ObjectStore, ref: Ref) -> DatasetSplits:
        location = _location(ref)
        return cls.parse(await store.aio.get_bytes(ref.bucket, ref.key, expected_sha256=ref.sha256 or None), location)

    def split(self, *names: str, limit: int | None = None) -> list[ManifestEntry]:
        """Entries of the first named split that has any, in manifest order, at most `limit`."""
        for name in names:
            if name not in SPLITS:
                raise ValueError(f"split {name!r} is not one of {SPLITS}")
            chosen = [e for e in self.entries if e.split == name]
            if chosen:
                return chosen[:limit] if limit is not None else chosen
        return []


def load_images(cache: FrameCache, entries: list[ManifestEntry], input_size: int, *, threads: int = 8,
                should_stop: Callable[[], bool] | None = None) -> np.ndarray:
    """Frames of `entries` as model input, float32 [N, 3, S, S] in 0..1, in `entries` order."""
    if not entries:
        raise ManifestError("no frames to load")
    paths = cache.fetch_all(entries, threads=threads, should_stop=should_stop)
    return np.stack([frame_input(p.read_bytes(), input_size) for p in paths])
