"""Synthetic dataset versions (lineloop.vision's apple renderer), for tests, benchmarks, the demo.

Writes what labeling would: frames in the frames bucket, a manifest in the datasets
bucket, and the `DatasetVersioned` event that announces it (not published here). The
manifest's key is this module's own, not labeling's layout: consumers must find it through
the event's `manifest` reference, never by rebuilding a key.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass

from lineloop.contracts.catalogue import bucket
from lineloop.model.manifest import FRAMES_BUCKET
from lineloop.storage.objects import ObjectStore
from lineloop.v1.common_pb2 import ObjectRef
from lineloop.v1.events_pb2 import DatasetVersioned
from lineloop.vision import CLASSES, AppleRenderer, encode_png


@dataclass(frozen=True)
class SyntheticDataset:
    event: DatasetVersioned
    manifest_lines: list[dict]


def write_dataset(
    store: ObjectStore,
    dataset: str,
    version: str,
    *,
    per_class: dict[str, int] | int = 20,
    split_shares: tuple[float, float, float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    size: int = 64,
    scramble_train_labels: bool = False,
    reuse_test_from: list[dict] | None = None,
    line_id: str = "",
    datasets_bucket: str = "",
) -> SyntheticDataset:
    """Render frames into the frames bucket and a manifest into the datasets bucket.

    `scramble_train_labels` mislabels train/val frames (a dataset that trains a bad
    model); `reuse_test_from` keeps another version's test split, so two versions can
    be compared on the same held-out frames. `datasets_bucket` (default: the catalogue's)
    stands in for a labeling service configured with another bucket.
    """
    renderer = AppleRenderer(size=size, seed=seed)
    rng = random.Random(seed)
    counts = per_class if isinstance(per_class, dict) else {c: per_class for c in CLASSES}
    classes = sorted(counts)
    lines: list[dict] = []
    for label in classes:
        n = counts[label]
        n_train, n_val = int(n * split_shares[0]), int(n * split_shares[1])
        for i in range(n):
            split = "train" if i < n_train else "val" if i < n_train + n_val else "test"
            if split == "test" and reuse_test_from is not None:
                continue
            data = encode_png(renderer.render(classes.index(label) * 1_000_000 + i, label=label).image)
            obj = store.put_content_addressed(FRAMES_BUCKET, data, "png", "image/png")
            stated = label
            if scramble_train_labels and split != "test":
                stated = classes[(classes.index(label) + 1 + rng.randrange(len(classes) - 1)) % len(classes)]
            lines.append({
                "frame_id": uuid.uuid4().hex, "key": obj.key, "sha256": obj.sha256, "label": stated,
                "label_source": "human", "split": split, "captured_at": "2026-11-22T00:00:00Z", "camera_id": "cam-1",
            })
    if reuse_test_from is not None:
        lines += [line for line in reuse_test_from if line["split"] == "test"]
    body = "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines).encode()
    stored = store.put_bytes(datasets_bucket or bucket("datasets"), f"synthetic/{dataset}/{version}.jsonl", body,
                             "application/x-ndjson")
    event = DatasetVersioned(
        dataset=dataset, version=version, classes=classes, line_id=line_id or dataset, created_by="synthetic",
        manifest=ObjectRef(bucket=stored.bucket, key=stored.key, sha256=stored.sha256, size_bytes=stored.size_bytes),
    )
    for line in lines:
        event.class_counts[line["label"]] = event.class_counts[line["label"]] + 1
        event.split_counts[line["split"]] = event.split_counts[line["split"]] + 1
    return SyntheticDataset(event=event, manifest_lines=lines)
