"""Frames of a model's own dataset version: training split for INT8 calibration, test split to verify."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lineloop.model.dataset import DatasetSplits, load_images
from lineloop.model.manifest import FrameCache, ManifestError
from lineloop.storage.objects import ObjectStore, ObjectStoreError
from lineloop.v1.common_pb2 import ObjectRef
from lineloop.vision import ImageRejected


class FramesUnavailable(Exception):
    """The dataset version cannot give the frames a build needs."""


class DatasetFrames:
    """Frames of one dataset version, fetched once into a local content-addressed cache."""

    def __init__(self, objects: ObjectStore, cache_dir: Path, manifest: ObjectRef, input_size: int, *,
                 name: str = "") -> None:
        """`manifest`: where the registered model's event says its dataset's manifest is."""
        self.cache = FrameCache(cache_dir, objects)
        self.input_size = input_size
        try:
            self.splits = DatasetSplits.read(objects, manifest)
        except (ObjectStoreError, ManifestError) as err:
            raise FramesUnavailable(f"dataset {name}: {err}" if name else str(err)) from err

    def split(self, *names: str, limit: int) -> np.ndarray:
        """Up to `limit` frames [N,3,S,S] of the first named split that has any, in manifest order."""
        chosen = self.splits.split(*names, limit=limit)
        if not chosen:
            raise FramesUnavailable(f"the dataset has no frames in split {' or '.join(names)}")
        try:
            return load_images(self.cache, chosen, self.input_size, threads=4)
        except (ObjectStoreError, ManifestError, ImageRejected) as err:
            raise FramesUnavailable(f"{chosen[0].split} split: {err}") from err
