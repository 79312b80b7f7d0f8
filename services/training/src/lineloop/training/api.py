"""gRPC TrainingService: start, get, list, cancel and watch runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
from sqlalchemy import update

from lineloop.runtime import Service, abort
from lineloop.training import state
from lineloop.training.settings import TrainingSettings
from lineloop.training.job import TrainParams
from lineloop.v1 import training_pb2 as pb
from lineloop.v1.training_pb2_grpc import TrainingServiceServicer

SERVICE = "training"
WATCH_POLL_S = 0.5


class TrainingApi(TrainingServiceServicer):
    def __init__(self, service: Service, settings: TrainingSettings, wake) -> None:
        self.service = service
        self.settings = settings
        self.wake = wake

    async def StartRun(self, request: pb.StartRunRequest, context: grpc.aio.ServicerContext) -> pb.Run:
        if not request.dataset:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "MISSING_DATASET", "dataset is required", service=SERVICE)
        try:
            TrainParams.from_strings(dict(request.params))
        except ValueError as err:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PARAMS", str(err), service=SERVICE)
        async with self.service.db.write() as s:
            ds = state.get_dataset(s, request.dataset, request.dataset_version)
            if ds is None:
                what = f"{request.dataset} {request.dataset_version}" if request.dataset_version else f"{request.dataset} (any version)"
                await abort(context, grpc.StatusCode.NOT_FOUND, "UNKNOWN_DATASET",
                            f"training has not received dataset {what} on datasets.versioned.v1", service=SERVICE,
                            dataset=request.dataset, version=request.dataset_version)
            run_id, _ = state.enqueue(
                s, model_name=request.model_name or self.settings.model_for(request.dataset), dataset=request.dataset,
                version=ds["version"], sha256=ds["manifest_sha256"], params=dict(request.params),
                reason="started by hand", requested_by=request.requested_by or "grpc")
        self.wake()
        return await self._get(run_id)

    async def GetRun(self, request: pb.GetRunRequest, context: grpc.aio.ServicerContext) -> pb.Run:
        run = await self._get(request.run_id)
        if run is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, "UNKNOWN_RUN", f"no run {request.run_id!r}", service=SERVICE)
        return run

    async def ListRuns(self, request: pb.ListRunsRequest, context: grpc.aio.ServicerContext) -> pb.ListRunsResponse:
        limit = request.limit if request.limit > 0 else 50
        with self.service.db.session() as s:
            rows = state.list_run_rows(s, request.model_name, min(limit, 1000))
        return pb.ListRunsResponse(runs=[state.run_proto(r) for r in rows])

    async def CancelRun(self, request: pb.CancelRunRequest, context: grpc.aio.ServicerContext) -> pb.Run:
        async with self.service.db.write() as s:
            row = state.get_run_row(s, request.run_id)
            if row is None:
                await abort(context, grpc.StatusCode.NOT_FOUND, "UNKNOWN_RUN", f"no run {request.run_id!r}", service=SERVICE)
            if row["state"] in state.FINISHED:
                await abort(context, grpc.StatusCode.FAILED_PRECONDITION, "RUN_FINISHED",
                            f"run {request.run_id} already ended ({row['state']})", service=SERVICE, state=row["state"])
            reason = f"cancelled: {request.reason}" if request.reason else "cancelled"
            if row["state"] == state.QUEUED:
                state.finish(s, request.run_id, state.CANCELLED, error=reason, cancel_requested=True)
            else:
                s.execute(update(state.runs).where(state.runs.c.run_id == request.run_id)
                          .values(cancel_requested=True, error=reason))
        # A running run stops within a poll and a batch; answer with its end state when that is quick.
        for _ in range(int(10 / WATCH_POLL_S)):
            run = await self._get(request.run_id)
            if run.state != pb.RunState.RUN_STATE_RUNNING:
                break
            await asyncio.sleep(WATCH_POLL_S)
        return run

    async def WatchRun(self, request: pb.GetRunRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.RunProgress]:
        run = await self._get(request.run_id)
        if run is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, "UNKNOWN_RUN", f"no run {request.run_id!r}", service=SERVICE)
        last = None
        while True:
            key = (run.state, len(run.epochs))
            if key != last:
                last = key
                yield pb.RunProgress(run=run, latest=run.epochs[-1] if run.epochs else None)
            if run.state in (pb.RunState.RUN_STATE_SUCCEEDED, pb.RunState.RUN_STATE_FAILED, pb.RunState.RUN_STATE_CANCELLED):
                return
            await asyncio.sleep(WATCH_POLL_S)
            run = await self._get(request.run_id)

    async def _get(self, run_id: str) -> pb.Run | None:
        with self.service.db.session() as s:
            row = state.get_run_row(s, run_id)
        return state.run_proto(row) if row else None
