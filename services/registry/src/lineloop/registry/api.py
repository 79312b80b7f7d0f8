"""gRPC RegistryService: list/get versions, promote, roll back, set the canary share."""

from __future__ import annotations

import grpc

from lineloop.registry import state
from lineloop.registry.stages import RegistryError, Stages
from lineloop.runtime import Service, abort
from lineloop.runtime.auth import current_identity
from lineloop.v1 import registry_pb2 as pb
from lineloop.v1.common_pb2 import Stage
from lineloop.v1.registry_pb2_grpc import RegistryServiceServicer

SERVICE = "registry"


class RegistryApi(RegistryServiceServicer):
    def __init__(self, service: Service, stages: Stages) -> None:
        self.service = service
        self.stages = stages

    async def ListVersions(self, request: pb.ListVersionsRequest, context: grpc.aio.ServicerContext) -> pb.ListVersionsResponse:
        stage = await self._stage(context, request.stage, "stage")
        with self.service.db.session() as s:
            rows = state.list_version_rows(s, request.model_name, stage)
            return pb.ListVersionsResponse(versions=[state.version_proto(s, r) for r in rows])

    async def GetVersion(self, request: pb.GetVersionRequest, context: grpc.aio.ServicerContext) -> pb.ModelVersion:
        if not request.model_name or not request.version:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "MISSING_FIELD",
                        "model_name and version (a number or production/staging/canary/latest) are required", service=SERVICE)
        with self.service.db.session() as s:
            row = state.get_version_row(s, request.model_name, request.version)
            if row is not None:
                return state.version_proto(s, row)
        await abort(context, grpc.StatusCode.NOT_FOUND, "UNKNOWN_VERSION",
                    f"{request.model_name} has no version {request.version!r}", service=SERVICE,
                    model=request.model_name, version=request.version)

    async def Promote(self, request: pb.PromoteRequest, context: grpc.aio.ServicerContext) -> pb.ModelVersion:
        actor = await self._require(context, request.model_name, request.version, request.actor)
        to_stage = await self._stage(context, request.to_stage, "to_stage")
        return await self._call(context, self.stages.change(
            request.model_name, request.version, to_stage, actor=actor,
            reason=request.reason or "promoted by hand"))

    async def Rollback(self, request: pb.RollbackRequest, context: grpc.aio.ServicerContext) -> pb.ModelVersion:
        actor = await self._require(context, request.model_name, "-", request.actor)
        return await self._call(context, self.stages.rollback(request.model_name, actor=actor, reason=request.reason))

    async def SetCanary(self, request: pb.SetCanaryRequest, context: grpc.aio.ServicerContext) -> pb.ModelVersion:
        actor = await self._require(context, request.model_name, request.version, request.actor)
        return await self._call(context, self.stages.change(
            request.model_name, request.version, "staging", actor=actor, canary_share=request.share,
            reason=request.reason or f"canary share set to {request.share:.3f}"))

    async def _stage(self, context, stage: int, field: str) -> str:
        """The stage's name ("" for unspecified); a number this build does not know is INVALID_ARGUMENT (was UNKNOWN)."""
        if stage not in state.STAGE_NAMES:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_STAGE",
                        f"{field} {stage} is not a Stage ({', '.join(Stage.keys())})", service=SERVICE)
        return state.stage_name(stage)

    async def _require(self, context, model_name: str, version: str, actor: str) -> str:
        """The actor for the history: the authenticated caller when auth is on (the request's
        `actor` is ignored then, it is only a claim), else the request's `actor`, which is required."""
        identity = current_identity()
        missing = [n for n, v in (("model_name", model_name), ("version", version),
                                  ("actor", identity is not None or actor)) if not v]
        if missing:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "MISSING_FIELD",
                        f"{', '.join(missing)} required (actor: who is making the change, for the history)", service=SERVICE)
        return identity.name if identity is not None else actor

    async def _call(self, context, change) -> pb.ModelVersion:
        try:
            return await change
        except RegistryError as err:
            await abort(context, err.code, err.reason, err.message, service=SERVICE, **err.metadata)
