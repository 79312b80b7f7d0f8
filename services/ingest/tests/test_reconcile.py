"""Reconciliation of the frames bucket with ingest's index, against the real stack and a real
ingest (SQLite and PostgreSQL): orphans and missing objects found exactly, only old orphans
deleted."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from lineloop.ingest import reconcile, state
from lineloop.ingest.api import UPLOAD_PREFIX
from lineloop.ingest.testing import (
    frame,
    ingest_settings,
    jpeg,
    object_store,
    publish,
    running_ingest,
    skip_group_to_end,
    uid,
)
from lineloop.storage.sql import Database
from lineloop.v1.common_pb2 import ObjectRef
from lineloop.v1 import ingest_pb2, ingest_pb2_grpc

LINELOOP = str(Path(sys.executable).parent / "lineloop")


async def _ingest_over_grpc(service, frames) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        response = await stub.UploadFrames(iter([ingest_pb2.UploadFrameRequest(frame=f) for f in frames]))
    assert response.accepted == len(frames), response


def _settings(stack, database_url, bucket, **overrides):
    # A bucket of its own: the session stack's frames bucket holds every other test's frames.
    return ingest_settings(stack, database_url, frames_bucket=bucket, upload_buckets=[bucket], **overrides)


# PostgreSQL only (the production database): the same queries run on SQLite in the tests below.
@pytest.mark.parametrize("database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
async def test_reconcile_reports_orphans_and_missing_objects_and_deletes_only_old_orphans(stack, database_url, tmp_path):
    bucket = uid("recon")
    settings = _settings(stack, database_url, bucket)
    objects = object_store(stack)
    objects.ensure_buckets([bucket])
    await skip_group_to_end(stack, settings.consumer_group)
    line = uid("line")
    kept, lost = frame(jpeg(11), line=line), frame(jpeg(12), line=line)
    async with running_ingest(settings) as service:
        await _ingest_over_grpc(service, [kept, lost])
    with service.db.session() as session:  # the keys ingest itself recorded
        keys = {f.frame_id: f.image.key for f in (state.find_frame(session, kept.frame_id),
                                                   state.find_frame(session, lost.frame_id))}
    # What an upload whose client never resent leaves: stored, never indexed.
    orphan = objects.put_content_addressed(bucket, jpeg(13), "jpg", "image/jpeg")
    # What a gateway's presigned upload leaves once ingest copied it under its content key.
    upload = objects.put_bytes(bucket, f"{UPLOAD_PREFIX}{'ab' * 32}/{uid('put')}.jpg", jpeg(15), "image/jpeg")
    # An indexed frame whose object is gone.
    objects.delete(bucket, keys[lost.frame_id])

    report = await asyncio.to_thread(reconcile.find_inconsistencies, settings, grace_s=0)
    assert [o.key for o in report.orphans] == [orphan.key]
    assert [o.key for o in report.staged] == [upload.key]  # expected: not an orphan, not an inconsistency
    assert [(m.bucket, m.key, m.frame_ids) for m in report.missing] == [(bucket, keys[lost.frame_id], [lost.frame_id])]
    assert (report.objects, report.references, report.in_grace, report.deleted) == (3, 2, [], [])
    assert not report.consistent

    # The same through the CLI, as JSON; exit 1 while inconsistencies remain.
    no_labeling = f"sqlite:///{tmp_path / 'labeling.db'}"
    env = {**stack.env(), "LINELOOP_INGEST_DATABASE_URL": database_url, "LINELOOP_INGEST_FRAMES_BUCKET": bucket,
           "LINELOOP_LABELING_DATABASE_URL": no_labeling}
    cli = subprocess.run([LINELOOP, "reconcile", "--json", "--grace-s", "0"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert cli.returncode == 1, cli.stderr
    printed = json.loads(cli.stdout)
    assert [o["key"] for o in printed["frames"]["orphans"]] == [orphan.key]
    assert [(m["key"], m["frame_ids"]) for m in printed["frames"]["missing"]] == [(keys[lost.frame_id], [lost.frame_id])]
    assert printed["datasets"] == {"skipped": f"no labeling database at {no_labeling}"}
    assert not (tmp_path / "labeling.db").exists()  # looked at, not created

    # The default grace period (a day) covers an object written seconds ago: nothing deleted.
    report = await asyncio.to_thread(reconcile.reconcile, settings, delete=True)
    assert report.deleted == [] and [o.key for o in report.in_grace] == [orphan.key]
    assert objects.exists(bucket, orphan.key) and objects.exists(bucket, upload.key)

    # Grace 0: the orphan goes, the referenced object stays, the missing one is still reported.
    report = await asyncio.to_thread(reconcile.reconcile, settings, grace_s=0, delete=True)
    assert sorted(report.deleted) == sorted([orphan.key, upload.key])
    assert not objects.exists(bucket, orphan.key) and not objects.exists(bucket, upload.key)
    assert objects.exists(bucket, keys[kept.frame_id])
    assert [m.key for m in report.missing] == [keys[lost.frame_id]]

    # A fresh unreferenced object (an upload in flight) within the grace period is kept.
    fresh = objects.put_content_addressed(bucket, jpeg(14), "jpg", "image/jpeg")
    report = await asyncio.to_thread(reconcile.reconcile, settings, grace_s=3600, delete=True)
    assert (report.deleted, [o.key for o in report.in_grace], report.orphans) == ([], [fresh.key], [])
    assert objects.exists(bucket, fresh.key)


async def test_ingest_deletes_old_orphans_periodically_when_configured(stack, tmp_path, monkeypatch):
    bucket = uid("recon")
    settings = _settings(stack, f"sqlite:///{tmp_path / 'ingest.db'}", bucket)
    objects = object_store(stack)
    objects.ensure_buckets([bucket])
    await skip_group_to_end(stack, settings.consumer_group)
    monkeypatch.setenv("LINELOOP_INGEST_RECONCILE_INTERVAL_S", "0.2")
    monkeypatch.setenv("LINELOOP_INGEST_RECONCILE_GRACE_S", "0")
    monkeypatch.setenv("LINELOOP_INGEST_RECONCILE_DELETE", "true")
    line = uid("line")
    kept = frame(jpeg(21), line=line)
    async with running_ingest(settings) as service:
        await _ingest_over_grpc(service, [kept])
        orphan = objects.put_content_addressed(bucket, jpeg(22), "jpg", "image/jpeg")
        for _ in range(100):
            if not objects.exists(bucket, orphan.key):
                break
            await asyncio.sleep(0.1)
        assert not objects.exists(bucket, orphan.key), "the periodic job did not delete the orphan"
    assert reconcile.find_inconsistencies(settings, grace_s=0).consistent


async def test_an_orphan_that_a_frame_references_by_the_time_of_the_delete_is_kept(stack, database_url, monkeypatch):
    """Another replica commits a frame for the orphan's content between the index read and the
    delete: the check made just before the delete keeps the object (grace 0, so age saves nothing)."""
    bucket = uid("recon")
    settings = _settings(stack, database_url, bucket)
    objects = object_store(stack)
    objects.ensure_buckets([bucket])
    await skip_group_to_end(stack, settings.consumer_group)
    image = jpeg(31)
    orphan = objects.put_content_addressed(bucket, image, "jpg", "image/jpeg")
    late = frame(image, line=uid("line"))
    loop = asyncio.get_running_loop()
    read_index = state.referenced_objects

    async with running_ingest(settings) as service:
        def read_then_commit(session):
            seen = read_index(session)
            asyncio.run_coroutine_threadsafe(_ingest_over_grpc(service, [late]), loop).result(60)
            return seen

        monkeypatch.setattr(state, "referenced_objects", read_then_commit)
        report = await asyncio.to_thread(reconcile.reconcile, settings, grace_s=0, delete=True)
    assert [o.key for o in report.orphans] == [orphan.key]  # unreferenced when the index was read
    assert report.deleted == []
    assert objects.exists(bucket, orphan.key)
    monkeypatch.undo()
    assert (await asyncio.to_thread(reconcile.find_inconsistencies, settings, grace_s=0)).consistent


def test_reconcile_without_an_ingest_database_says_so_and_creates_none(tmp_path):
    missing = f"sqlite:///{tmp_path / 'ingest.db'}"
    cli = subprocess.run([LINELOOP, "reconcile"], env={"PATH": "/usr/bin:/bin", "LINELOOP_INGEST_DATABASE_URL": missing},
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2, cli.stdout + cli.stderr
    assert f"cannot reconcile: no ingest database at {missing}" in " ".join(cli.stderr.split())
    assert not (tmp_path / "ingest.db").exists()


async def test_a_deleting_pass_judges_age_by_the_oldest_frame_ingest_has_not_consumed(stack, tmp_path):
    """A gateway uploaded an image and queued its frame while ingest was down: the upload is old
    by the wall clock, but not next to the queued frame, so it stays; once ingest has caught up
    it is referenced."""
    bucket = uid("recon")
    settings = _settings(stack, f"sqlite:///{tmp_path / 'ingest.db'}", bucket)
    objects = object_store(stack)
    objects.ensure_buckets([bucket])
    Database(settings.sql_url).migrate(state.SCHEMA_COMPONENT, state.SCHEMA_VERSION, state.metadata)
    await skip_group_to_end(stack, settings.consumer_group)
    upload = objects.put_content_addressed(bucket, jpeg(41), "jpg", "image/jpeg")
    queued = frame(line=uid("line"), image_ref=ObjectRef(bucket=bucket, key=upload.key, sha256=upload.sha256))
    await publish(stack, [queued])
    grace_s = 3.0
    await asyncio.sleep(grace_s + 2.0)  # the upload is now older than the grace period (S3 times are whole seconds)

    report = await asyncio.to_thread(reconcile.reconcile, settings, grace_s=grace_s, delete=True)
    assert report.backlog_since is not None
    assert (report.deleted, report.orphans, [o.key for o in report.in_grace]) == ([], [], [upload.key])
    assert objects.exists(bucket, upload.key)

    async with running_ingest(settings) as service:
        for _ in range(600):
            with service.db.session() as session:
                if state.find_frame(session, queued.frame_id) is not None:
                    break
            await asyncio.sleep(0.1)
    report = await asyncio.to_thread(reconcile.reconcile, settings, grace_s=grace_s, delete=True)
    assert report.backlog_since is None and report.consistent and report.references == 1, report.as_dict()
    assert objects.exists(bucket, upload.key)
