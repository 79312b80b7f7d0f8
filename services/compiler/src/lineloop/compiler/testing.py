"""A small trained model and its dataset version, for compiler/registry/edge tests and the benchmark.

The model is the real `lineloop.model` network, trained for a few epochs on synthetic apple
frames; the dataset version is written to S3 in labeling's manifest format, so a build
calibrates and verifies on real frames exactly as it does in production. Keys here are this
module's own, not labeling's or training's layout: the services under test must find every
object through the references the events carry.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import torch

from lineloop.contracts.catalogue import bucket
from lineloop.model.export import export_onnx
from lineloop.model.manifest import FRAMES_BUCKET
from lineloop.model.net import InspectionNet, ModelSpec, checkpoint_bytes
from lineloop.storage.objects import ObjectStore
from lineloop.v1.common_pb2 import STAGE_CANDIDATE, ObjectRef
from lineloop.v1.events_pb2 import GateDecision, ModelRegistered
from lineloop.vision import AppleRenderer, encode_png, to_model_input

CLASSES = ("bruise", "ok", "rot", "scab")
BALANCED = {c: 0.25 for c in CLASSES}


@dataclasses.dataclass
class DemoData:
    images: np.ndarray  # [N,3,S,S]
    labels: np.ndarray  # class index per frame
    splits: list[str]
    png: list[bytes]
    input_size: int

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        mask = np.array([s == name for s in self.splits])
        return self.images[mask], self.labels[mask]


def demo_data(frames: int = 400, input_size: int = 48, seed: int = 1) -> DemoData:
    """Balanced synthetic frames split 70/10/20 into train/val/test (deterministic)."""
    renderer = AppleRenderer(size=max(64, input_size), seed=seed, shares=BALANCED)
    rendered = [renderer.render(i) for i in range(frames)]
    splits = ["train" if i % 10 < 7 else "val" if i % 10 == 7 else "test" for i in range(frames)]
    return DemoData(
        images=np.stack([to_model_input(r.image, input_size) for r in rendered]),
        labels=np.array([CLASSES.index(r.label) for r in rendered]),
        splits=splits,
        png=[encode_png(r.image) for r in rendered],
        input_size=input_size,
    )


def train_demo_model(data: DemoData, width: int = 8, epochs: int = 15, seed: int = 0) -> InspectionNet:
    """AdamW with a one-cycle schedule: converges in few epochs on the synthetic frames."""
    torch.manual_seed(seed)
    model = InspectionNet(ModelSpec(classes=CLASSES, width=width, input_size=data.input_size))
    images, labels = (torch.from_numpy(a) for a in data.split("train"))
    steps = (len(images) + 31) // 32
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=1e-2, total_steps=epochs * steps)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), 32):
            batch = order[start:start + 32]
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(images[batch])[0], labels[batch])
            loss.backward()
            optimiser.step()
            schedule.step()
    return model.eval()


def upload_dataset(objects: ObjectStore, data: DemoData, dataset: str, version: str, *,
                   datasets_bucket: str = "") -> ObjectRef:
    """Frames (content-addressed) and a manifest.jsonl for them; returns the manifest's reference.

    `datasets_bucket` (default: the catalogue's) stands in for a labeling service configured with another.
    """
    lines = []
    for index, (png, label, split) in enumerate(zip(data.png, data.labels, data.splits)):
        stored = objects.put_content_addressed(FRAMES_BUCKET, png, "png", "image/png")
        lines.append(json.dumps({
            "frame_id": f"f{index:05d}", "key": stored.key, "sha256": stored.sha256,
            "label": CLASSES[label], "split": split,
        }))
    body = ("\n".join(lines) + "\n").encode()
    return objects.put_bytes(datasets_bucket or bucket("datasets"), f"testing/{dataset}/{version}.jsonl", body,
                             "application/x-ndjson").to_proto()


def register_event(objects: ObjectStore, model: InspectionNet, *, model_name: str, version: str, dataset: str,
                   dataset_version: str, dataset_manifest: ObjectRef, input_size: int, passed: bool = True,
                   onnx_bytes: bytes | None = None) -> ModelRegistered:
    """Store the weights and the ONNX file and describe the version as the registry would.

    `dataset_manifest`: what `upload_dataset` returned. `onnx_bytes` stands in for the model's
    own export: a broken export, in tests. The weights sit under another prefix than the ONNX
    file, so a compiler that guessed one from the other would not find them.
    """
    prefix = f"testing/{model_name}/{version}/"
    weights = objects.put_bytes(bucket("models"), prefix + "checkpoint/weights.pt", checkpoint_bytes(model),
                                "application/octet-stream")
    stored = objects.put_bytes(bucket("models"), prefix + "model.onnx",
                               export_onnx(model) if onnx_bytes is None else onnx_bytes, "application/octet-stream")
    return ModelRegistered(
        model_name=model_name, version=version, run_id=f"run-{version}", dataset=dataset,
        dataset_version=dataset_version, stage=STAGE_CANDIDATE, gate=GateDecision(passed=passed, reason="test"),
        onnx=stored.to_proto(), weights=weights.to_proto(), dataset_manifest=dataset_manifest, classes=list(CLASSES),
        input_size=input_size,
    )
