"""Dataset versions against the object store (SQLite, PostgreSQL, the real S3 store): a
missing manifest and a manifest frame that is gone are found exactly; unowned objects are
listed, not counted as inconsistencies."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from lineloop.bus import Bus, outbox
from lineloop.labeling import labels
from lineloop.labeling.datasets import Datasets
from lineloop.labeling.reconcile import find_dataset_inconsistencies
from lineloop.storage.objects import ObjectStore

from .conftest import service_settings


async def _label(db, frame_ids) -> None:
    async with db.write() as s:
        for frame_id in frame_ids:
            labels.submit(s, frame_id=frame_id, label_class="rot", annotator="alice", note="", lease_id="",
                          classes=["ok", "bruise", "rot", "scab"], now=datetime.now(UTC),
                          emit=lambda msg: outbox.add(s, msg, source="test"))


async def test_dataset_check_finds_missing_manifests_and_frames(stack, labeling_db, database_url, ingest_into, helpers):
    line = f"line-{uuid.uuid4().hex[:6]}"
    bucket = f"recon-ds-{uuid.uuid4().hex[:8]}"  # its own: the session stack's bucket holds other tests' manifests
    cfg = service_settings(stack, database_url, datasets_bucket=bucket, auto_accept_threshold=1.1)
    objects = ObjectStore.from_url(stack.s3_endpoint, stack.s3_access_key, stack.s3_secret_key)
    objects.ensure_buckets([bucket])
    datasets = Datasets(cfg, labeling_db, Bus(stack.kafka_bootstrap, source="lineloop/labeling", db=labeling_db), objects)
    frames = [helpers.frame_event(line, "cam-1", {"ok": 0.5, "rot": 0.5}) for _ in range(3)]
    for msg in frames:
        await ingest_into(cfg, msg)
        objects.put_bytes(msg.image.bucket, msg.image.key, msg.frame_id.encode(), "image/jpeg")
    await _label(labeling_db, [m.frame_id for m in frames[:2]])
    v1, _ = await datasets.cut(line, line, requested_by="test", reason="")
    await _label(labeling_db, [frames[2].frame_id])
    v2, _ = await datasets.cut(line, line, requested_by="test", reason="")

    report = find_dataset_inconsistencies(cfg)
    assert report.consistent and (report.versions, report.entries) == (2, 5), report.as_dict()

    objects.delete(frames[0].image.bucket, frames[0].image.key)  # a frame both versions list
    objects.delete(bucket, v2.manifest.key)
    objects.put_bytes(bucket, f"{line}/v0003/manifest.jsonl", b"{}\n", "application/x-ndjson")  # a cut never committed
    report = find_dataset_inconsistencies(cfg)
    assert [(b.version, b.key, b.problem) for b in report.broken_manifests] == [("v0002", v2.manifest.key, "missing")]
    assert [(m.version, m.frame_id, m.key) for m in report.missing_frames] == [
        ("v0001", frames[0].frame_id, frames[0].image.key)]
    assert report.unowned == [f"{line}/v0003/manifest.jsonl"]
    assert not report.consistent
