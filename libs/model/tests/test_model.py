"""The shared model code: network shapes, ONNX export under the serving contract, metrics, manifests."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from lineloop.model.dataset import DatasetSplits
from lineloop.model.export import export_onnx
from lineloop.model.manifest import ManifestError, class_list, parse_manifest
from lineloop.model.metrics import evaluate
from lineloop.model.net import InspectionNet, ModelSpec, checkpoint, from_checkpoint
from lineloop.model.onnx_eval import OnnxClassifier, evaluate_onnx
from lineloop.serving.contract import onnx_signature
from lineloop.v1.common_pb2 import ObjectRef

CLASSES = ("bruise", "ok", "rot", "scab")


def test_net_returns_logits_and_embedding_for_any_multiple_of_16():
    for size, width in ((96, 16), (64, 8)):
        model = InspectionNet(ModelSpec(classes=CLASSES, width=width, input_size=size)).eval()
        logits, embedding = model(torch.rand(3, 3, size, size))
        assert logits.shape == (3, 4) and embedding.shape == (3, 8 * width)
    with pytest.raises(ValueError, match="multiple of 16"):
        ModelSpec(classes=CLASSES, input_size=90)
    with pytest.raises(ValueError, match="at least 2 classes"):
        ModelSpec(classes=("ok",))


def test_onnx_export_follows_the_serving_contract_and_matches_torch(tmp_path):
    torch.manual_seed(0)
    model = InspectionNet(ModelSpec(classes=CLASSES, width=8, input_size=64)).eval()
    data = export_onnx(model)
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    graph = onnx.load(str(path))
    assert graph.opset_import[0].version == 17
    signature = onnx_signature(path)  # the serving team's own contract check
    assert (signature.input_size, signature.num_classes, signature.embedding_dim) == (64, 4, 64)
    images = np.random.default_rng(1).random((5, 3, 64, 64), dtype=np.float32)  # batch 5: the axis is dynamic
    probs = OnnxClassifier(data).probabilities(images)
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(images))
    np.testing.assert_allclose(probs, torch.softmax(logits, 1).numpy(), atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    restored = from_checkpoint(checkpoint(model)).eval()
    with torch.no_grad():
        torch.testing.assert_close(restored(torch.from_numpy(images))[0], logits)


def test_metrics_by_hand():
    classes = ["bruise", "ok", "rot"]
    y_true = np.array([1, 1, 1, 1, 0, 0, 2, 2])
    y_pred = np.array([1, 1, 0, 2, 0, 1, 2, 2])
    m = evaluate(y_true, y_pred, classes)
    assert m.samples == 8 and m.accuracy == pytest.approx(5 / 8)
    assert m.ok_false_positive_rate == pytest.approx(2 / 4)  # two ok frames thrown away
    assert m.recall == pytest.approx({"bruise": 0.5, "ok": 0.5, "rot": 1.0})
    assert m.precision == pytest.approx({"bruise": 0.5, "ok": 2 / 3, "rot": 2 / 3})
    assert m.confusion == [[1, 1, 0], [1, 2, 1], [0, 0, 2]]
    proto = m.to_proto()
    assert proto.confusion[1].true_class == "ok" and dict(proto.confusion[1].predicted) == {"bruise": 1, "ok": 2, "rot": 1}
    with pytest.raises(ValueError, match="outside"):
        evaluate(np.array([3]), np.array([0]), classes)


def test_onnx_evaluation_counts_labels_the_model_does_not_know_as_errors():
    model = InspectionNet(ModelSpec(classes=("ok", "rot"), width=4, input_size=32)).eval()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([5.0, -5.0]))  # always "ok"
    images = np.zeros((4, 3, 32, 32), np.float32)
    m = evaluate_onnx(export_onnx(model), ["ok", "rot"], images, ["ok", "ok", "rot", "scab"])
    assert m.classes == ["ok", "rot", "scab"] and m.accuracy == pytest.approx(0.5)
    assert m.recall["scab"] == 0.0 and m.ok_false_positive_rate == 0.0


def test_manifest_parsing_is_defensive():
    sha = "ab" * 32
    line = {"frame_id": "f1", "key": f"ab/{sha}.png", "sha256": sha, "label": "ok", "split": "train",
            "label_source": "human", "camera_id": "cam-1", "captured_at": "2026-11-22T00:00:00Z", "lighting": "new"}
    entries = parse_manifest((json.dumps(line) + "\n\n" + json.dumps({**line, "frame_id": "f2", "label": "rot"})).encode())
    assert [e.label for e in entries] == ["ok", "rot"] and entries[0].extra == {"lighting": "new"}
    assert class_list(entries, ["scab"]) == ["ok", "rot", "scab"]
    with pytest.raises(ManifestError, match="line 2: missing label"):
        parse_manifest((json.dumps(line) + "\n" + json.dumps({**line, "label": ""})).encode())
    with pytest.raises(ManifestError, match="line 1: split 'holdout'"):
        parse_manifest(json.dumps({**line, "split": "holdout"}).encode())
    with pytest.raises(ManifestError, match="not 64 hex"):
        parse_manifest(json.dumps({**line, "sha256": "xyz"}).encode())
    with pytest.raises(ManifestError, match="not JSON"):
        parse_manifest(b"{oops\n")
    with pytest.raises(ManifestError, match="no frames"):
        parse_manifest(b"\n")


def test_dataset_splits_keep_model_labels_out_of_judging_and_read_only_where_a_ref_points():
    def line(i: int, split: str, source: str = "human") -> str:
        return json.dumps({"frame_id": f"f{i}", "key": f"k{i}", "sha256": f"{i:064x}", "label": "ok", "split": split,
                           "label_source": source})

    data = "\n".join([line(1, "train", "model"), line(2, "test", "model"), line(3, "test"), line(4, "val"),
                      line(5, "train"), line(6, "test")]).encode()
    splits = DatasetSplits.parse(data, "datasets/x.jsonl")
    # model-made labels may train (f1) but never judge (f2 dropped from test)
    assert [e.frame_id for e in splits.split("train")] == ["f1", "f5"]
    assert [e.frame_id for e in splits.split("test")] == ["f3", "f6"]
    assert [e.frame_id for e in splits.split("test", "val", limit=1)] == ["f3"]
    assert [e.frame_id for e in DatasetSplits.parse(line(7, "val").encode()).split("test", "val")] == ["f7"]
    assert DatasetSplits.parse(line(8, "train").encode()).split("test") == []
    with pytest.raises(ValueError, match="split 'tset' is not one of"):
        splits.split("tset")
    with pytest.raises(ManifestError, match=r"manifest b/m.jsonl: manifest line 1: not JSON"):
        DatasetSplits.parse(b"{", "b/m.jsonl")
    # No reference, no guess: a consumer never falls back to a key of its own making.
    with pytest.raises(ManifestError, match="no manifest reference"):
        DatasetSplits.read(None, ObjectRef())  # type: ignore[arg-type]
