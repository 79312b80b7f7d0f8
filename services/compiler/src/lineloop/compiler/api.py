"""gRPC `CompilerService`: Compile (on demand, any configured target), GetBuild, ListBuilds."""

from __future__ import annotations

import grpc

from lineloop.compiler import state
from lineloop.compiler.profiles import ProfileCatalogue
from lineloop.compiler.worker import BuildWorker
from lineloop.runtime import abort
from lineloop.storage.sql import Database
from lineloop.v1 import compiler_pb2, compiler_pb2_grpc
from lineloop.v1.events_pb2 import BUILD_STATUS_UNAVAILABLE, ModelCompiled

SERVICE = "compiler"


class CompilerApi(compiler_pb2_grpc.CompilerServiceServicer):
    def __init__(self, db: Database, catalogue: ProfileCatalogue, worker: BuildWorker, compile_wait_s: float) -> None:
        self.db = db
        self.catalogue = catalogue
        self.worker = worker
        self.compile_wait_s = compile_wait_s

    async def Compile(self, request: compiler_pb2.CompileRequest, context: grpc.aio.ServicerContext):
        if not request.model_name or not request.version:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "MISSING_FIELD", "model_name and version are required",
                        service=SERVICE)
        unknown = [t for t in request.targets if t not in self.catalogue.profiles]
        if unknown:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_TARGET",
                        f"unknown target profiles {unknown}; configured: {sorted(self.catalogue.profiles)}",
                        service=SERVICE, targets=",".join(unknown))
        with self.db.session() as session:
            model = state.get_model(session, request.model_name, request.version)
        if model is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, "VERSION_NOT_REGISTERED",
                        f"{request.model_name} {request.version} is not a gated version known to the compiler "
                        "(it learns versions from models.registered.v1)", service=SERVICE)
        targets = list(request.targets) or sorted(self.catalogue.profiles)
        async with self.db.write() as session:
            build_ids = [
                state.ensure_build(session, request.model_name, request.version, t, retry_failed=True) for t in targets
            ]
        self.worker.wake()
        remaining = context.time_remaining()
        wait = self.compile_wait_s if remaining is None else min(self.compile_wait_s, max(0.0, remaining - 1.0))
        buildable = [b for b, t in zip(build_ids, targets) if t in self.worker.buildable]
        await self.worker.wait_finished(buildable, wait)
        with self.db.session() as session:
            found = [state.get_build(session, b) for b in build_ids]
        return compiler_pb2.CompileResponse(builds=[self._described(*f) for f in found if f is not None])

    async def GetBuild(self, request: compiler_pb2.GetBuildRequest, context: grpc.aio.ServicerContext) -> ModelCompiled:
        if not request.build_id:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "MISSING_FIELD", "build_id is required", service=SERVICE)
        with self.db.session() as session:
            found = state.get_build(session, request.build_id)
        if found is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, "BUILD_NOT_FOUND", f"no build {request.build_id!r}",
                        service=SERVICE)
        return self._described(*found)

    async def ListBuilds(self, request: compiler_pb2.ListBuildsRequest, context: grpc.aio.ServicerContext):
        with self.db.session() as session:
            found = state.list_builds(session, request.model_name, request.version)
        return compiler_pb2.ListBuildsResponse(builds=[self._described(*f) for f in found])

    def _described(self, build_state: str, build: ModelCompiled) -> ModelCompiled:
        """A queued build says why it has no result yet: queued, building, or no worker here can build it."""
        if build_state == state.DONE:
            return build
        if build.target in self.worker.unavailable:
            build.status = BUILD_STATUS_UNAVAILABLE
            build.reason = self.worker.unavailable[build.target]
        else:
            build.reason = "building" if build_state == state.RUNNING else "queued"
        return build
