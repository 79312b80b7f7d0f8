"""LabelingService over gRPC: tasks, labels, dataset versions, Label Studio files."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
from sqlalchemy.exc import IntegrityError

from lineloop.bus import Bus
from lineloop.contracts.labels import SOURCE_NAMES
from lineloop.labeling import labels, labelstudio, queue, state
from lineloop.labeling.datasets import CutBusy, CutHeld, Datasets
from lineloop.labeling.labels import LabelRejected
from lineloop.labeling.settings import LabelingSettings
from lineloop.runtime import abort
from lineloop.runtime.auth import Identity, current_identity
from lineloop.storage.objects import ObjectStore
from lineloop.storage.sql import Database
from lineloop.v1 import labeling_pb2 as pb
from lineloop.v1.events_pb2 import DatasetVersioned, LabelSource
from lineloop.v1.labeling_pb2_grpc import LabelingServiceServicer

SERVICE = "labeling"
CUT_WAIT_S = 10.0


def import_source(importer: Identity | None, ground_truth_roles: list[str]) -> int:
    """With auth on, an import is ground truth only when the importer's role vouches for it. With
    auth off there are no identities and SubmitLabel takes anyone's word too (the service warns
    at start that its API is open), so an import counts as a person's label."""
    if importer is None or importer.roles & set(ground_truth_roles):
        return LabelSource.LABEL_SOURCE_IMPORT
    return LabelSource.LABEL_SOURCE_IMPORT_UNVERIFIED


def _annotator(claimed: str) -> str:
    """Who labels: the authenticated caller when auth is on (the request's name is only a claim), else the request's."""
    identity = current_identity()
    return identity.name if identity is not None else claimed


class LabelingApi(LabelingServiceServicer):
    def __init__(
        self, cfg: LabelingSettings, db: Database, bus: Bus, objects: ObjectStore, datasets: Datasets
    ) -> None:
        self.cfg = cfg
        self.db = db
        self.bus = bus
        self.objects = objects
        self.datasets = datasets

    async def _reject(self, context: grpc.aio.ServicerContext, err: LabelRejected) -> None:
        await abort(context, err.code, err.reason, err.message, service=SERVICE, **err.metadata)

    async def NextTasks(self, request: pb.NextTasksRequest, context) -> pb.NextTasksResponse:
        annotator = _annotator(request.annotator)
        if not annotator:
            return await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "MISSING_ANNOTATOR",
                               "annotator is required", service=SERVICE)
        if request.max_tasks < 0:
            return await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "BAD_MAX_TASKS",
                               "max_tasks must be >= 0", service=SERVICE)
        wanted = min(request.max_tasks or 1, self.cfg.max_tasks_per_call)
        now = labels.utcnow()
        async with self.db.write() as s:
            leased = queue.next_tasks(s, self.cfg, annotator, request.line_id, wanted, now)
        tasks = []
        for ranked, lease_id, expires in leased:
            row = ranked.row
            task = pb.Task(
                task_id=row.frame_id, lease_id=lease_id, frame_id=row.frame_id, line_id=row.line_id,
                camera_id=row.camera_id, priority=ranked.priority, why=ranked.why,
                image_url=await self.objects.aio.presigned_get(
                    row.image_bucket, row.image_key, timedelta(seconds=self.cfg.image_url_expiry_s)
                ),
            )
            task.image.bucket, task.image.key = row.image_bucket, row.image_key
            task.image.sha256, task.image.size_bytes = row.sha256, row.size_bytes
            if row.prediction:
                task.prediction.MergeFromString(row.prediction)
            task.lease_expires_at.FromDatetime(expires)
            tasks.append(task)
        return pb.NextTasksResponse(tasks=tasks)

    async def SubmitLabel(self, request: pb.SubmitLabelRequest, context) -> pb.SubmitLabelResponse:
        for attempt in (1, 2):
            try:
                async with self.db.write() as s:
                    label, duplicate = labels.submit(
                        s, frame_id=request.frame_id, label_class=request.label_class,
                        annotator=_annotator(request.annotator), note=request.note, lease_id=request.lease_id, classes=self.cfg.classes,
                        now=labels.utcnow(), emit=lambda msg: self.bus.add_to_outbox(s, msg),
                    )
                break
            except LabelRejected as err:
                return await self._reject(context, err)
            except IntegrityError:
                # The same lease submitted twice at once: the second run sees the first's label.
                if attempt == 2:
                    raise
        if not duplicate:
            self.bus.relay.wake()
            labels.created.add(1, {"source": "human"})
        return pb.SubmitLabelResponse(label=label, duplicate=duplicate)

    async def GetFrameLabels(self, request: pb.GetFrameLabelsRequest, context) -> pb.GetFrameLabelsResponse:
        with self.db.session() as s:
            try:
                labels.known_frame(s, request.frame_id)
            except LabelRejected as err:
                return await self._reject(context, err)
            history = state.label_history(s, request.frame_id)
        reply = pb.GetFrameLabelsResponse(history=history)
        effective = state.effective(history)
        if effective is not None:
            reply.effective.CopyFrom(effective)
        return reply

    async def CutDataset(self, request: pb.CutDatasetRequest, context):
        dataset = request.dataset or request.line_id
        # A policy cut of the same dataset takes a moment: wait for it rather than fail at once.
        deadline = asyncio.get_running_loop().time() + CUT_WAIT_S
        while True:
            try:
                version, _ = await self.datasets.cut(
                    dataset, request.line_id, requested_by=request.requested_by or "grpc",
                    reason=f"on request: {request.reason}" if request.reason else "on request",
                )
                break
            except LabelRejected as err:
                return await self._reject(context, err)
            except CutHeld as err:
                return await abort(context, grpc.StatusCode.FAILED_PRECONDITION, "LABELS_IN_REVIEW", str(err),
                                   service=SERVICE)
            except CutBusy as err:
                if asyncio.get_running_loop().time() > deadline:
                    return await abort(context, grpc.StatusCode.ABORTED, "CUT_IN_PROGRESS", str(err), service=SERVICE)
                await asyncio.sleep(0.25)
        if version is None:
            return await abort(
                context, grpc.StatusCode.FAILED_PRECONDITION, "NOTHING_LABELLED",
                f"no labelled frames for line {request.line_id or '(all lines)'!r}: nothing to cut", service=SERVICE,
            )
        return version

    async def GetDataset(self, request: pb.GetDatasetRequest, context):
        with self.db.session() as s:
            if request.version:
                found = state.dataset_version(s, request.dataset, request.version)
            else:
                row = state.head(s, request.dataset)
                found = None if row is None else DatasetVersioned.FromString(row.event)
        if found is None:
            what = f"{request.dataset!r} version {request.version!r}" if request.version else repr(request.dataset)
            return await abort(context, grpc.StatusCode.NOT_FOUND, "UNKNOWN_DATASET", f"no dataset {what}",
                               service=SERVICE, dataset=request.dataset)
        return found

    async def ListDatasets(self, request: pb.ListDatasetsRequest, context) -> pb.ListDatasetsResponse:
        with self.db.session() as s:
            return pb.ListDatasetsResponse(versions=state.list_versions(s, request.dataset))

    async def ExportLabelStudio(self, request: pb.ExportLabelStudioRequest, context) -> pb.ExportLabelStudioResponse:
        with self.db.session() as s:
            rows = labelstudio.export_rows(s, request.line_id, request.max_tasks, request.only_unlabelled)
        data = labelstudio.export_tasks(rows, self.objects, self.cfg.image_url_expiry_s)
        return pb.ExportLabelStudioResponse(tasks_json=data, count=len(rows))

    async def ImportLabelStudio(self, request: pb.ImportLabelStudioRequest, context) -> pb.ImportLabelStudioResponse:
        try:
            parsed, empty = labelstudio.parse_export(request.export_json, self.cfg.classes)
            importer = current_identity()
            if importer is not None:  # the file's annotator is a claim; the importer is who vouches for it
                for item in parsed:
                    item["note"] = f"{item['note']}; annotator in the file: {item['annotator']}"
                    item["annotator"] = importer.name
            source = import_source(importer, self.cfg.ground_truth_roles)
            async with self.db.write() as s:
                imported, known = labelstudio.import_export(s, parsed, lambda msg: self.bus.add_to_outbox(s, msg),
                                                            source=source)
        except LabelRejected as err:
            return await self._reject(context, err)
        if imported:
            self.bus.relay.wake()
            labels.created.add(imported, {"source": SOURCE_NAMES[source]})
        return pb.ImportLabelStudioResponse(imported=imported, skipped=empty + known)
