"""Frames of a model's own dataset version: training split for INT8 calibration, test split to verify."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lineloop.model.manifest import DATASETS_BUCKET, FrameCache, ManifestError, manifest_key, parse_manifest
from lineloop.storage.objects import ObjectStore, ObjectStoreError
from lineloop.vision import ImageRejected, decode_image, to_model_input


class FramesUnavailable(Exception):
    """The dataset version cannot give the frames a build needs."""


class DatasetFrames:
    """Frames of one dataset version, fetched once into a local content-addressed cache."""

    def __init__(self, objects: ObjectStore, cache_dir: Path, dataset: str, version: str, input_size: int) -> None:
        self.objects = objects
        self.cache = FrameCache(cache_dir, objects)
        self.input_size = input_size
        try:
            self.entries = parse_manifest(objects.get_bytes(DATASETS_BUCKET, manifest_key(dataset, version)))
        except (ObjectStoreError, ManifestError) as err:
            raise FramesUnavailable(f"dataset {dataset} {version}: {err}") from err

    def split(self, *names: str, limit: int) -> np.ndarray:
        """Up to `limit` frames [N,3,S,S] of the first named split that has any, in manifest order."""
        for name in names:
            chosen = [e for e in self.entries if e.split == name][:limit]
            if chosen:
                try:
                    paths = self.cache.fetch_all(chosen, threads=4)
                    return np.stack([to_model_input(decode_image(p.read_bytes()).image, self.input_size) for p in paths])
                except (ObjectStoreError, ManifestError, ImageRejected) as err:
                    raise FramesUnavailable(f"{name} split: {err}") from err
        raise FramesUnavailable(f"the dataset has no frames in split {' or '.join(names)}")
