"""The registry's deployer: Triton in the cloud, signed rollouts to edge fleets.

On every stage change the serving set of a model is recomputed from the registry's stages
(production, canary) plus the production and canary versions being replaced, which keep
serving until ingest has switched on `models.promoted.v1` (and make an immediate rollback a
no-load switch); they are dropped at the model's next change. Each version in the set is written into
Triton's repository from its verified `triton-onnx` build (numbered version = registry
version), the model is (re)loaded with a version policy naming exactly that set, and the
version being promoted must be ready and pass a smoke inference before this returns: any
failure raises, and the registry then changes nothing. Triton keeps serving versions that
stay in the policy while it loads the new one, so no request is dropped.

A version that reaches production is rolled out to every fleet that runs the model:
`edge.rollouts.v1` with a presigned manifest URL, the manifest's sha256, the artifacts,
the Ed25519 signature and a staged plan (pilot gateways, then all).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import metrics
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from lineloop.contracts.catalogue import bucket
from lineloop.edge import Fleet, load_fleets
from lineloop.registry import handlers_models_compiled, state
from lineloop.registry.deployer import Serving
from lineloop.runtime import Service, StackSettings
from lineloop.serving import ServingOptions, TritonControl, open_repository
from lineloop.v1.common_pb2 import Stage
from lineloop.v1.events_pb2 import EdgeRollout, LineDeployment, ModelCompiled, RolloutStage
from lineloop.v1.registry_pb2 import ModelVersion

log = logging.getLogger(__name__)

_meter = metrics.get_meter("lineloop.registry")
deploy_outcomes = _meter.create_counter(
    "lineloop.registry.deployments", unit="{deployment}",
    description="Triton deployments and edge rollouts. Attributes: kind (triton, edge), outcome, reason.",
)
triton_restores = _meter.create_counter(
    "lineloop.registry.triton_restores", unit="{model}",
    description="Models Triton had lost (a restart loads nothing) and the registry loaded again. Attributes: model.",
)


class DeploymentSettings(BaseSettings):
    """`LINELOOP_REGISTRY_*` settings of the deployer (the Triton addresses are the stack's)."""

    model_config = SettingsConfigDict(env_prefix="LINELOOP_REGISTRY_", extra="ignore", populate_by_name=True)

    # What tritonserver's --model-repository is: a path or s3://http(s)://host:port/bucket[/prefix].
    triton_repository: str = Field(
        f"s3://{StackSettings.model_fields['s3_endpoint'].default}/{bucket('triton')}",
        validation_alias=AliasChoices("LINELOOP_REGISTRY_TRITON_REPOSITORY", "LINELOOP_TRITON_REPOSITORY"),
    )
    # python: the embedded Triton (onnxruntime inside the python backend); onnxruntime_onnx on GPU Triton.
    triton_flavour: str = "python"
    triton_max_batch_size: int = 8
    triton_instance_count: int = 1
    triton_max_queue_delay_us: int = 2000
    triton_ready_timeout_s: float = 120.0
    cloud_target: str = "triton-onnx"
    fleets_file: Path | None = None  # empty: lineloop.edge's packaged default fleets
    manifest_url_ttl_s: int = 7 * 24 * 3600  # presigned URLs: SigV4 allows at most 7 days


class DeploymentError(RuntimeError):
    """Serving could not be made to match the change; the registry changes nothing."""


class TritonDeployer:
    """`lineloop.registry.deployer.Deployer` for Triton + edge fleets."""

    def __init__(self, service: Service, settings: DeploymentSettings | None = None,
                 fleets: list[Fleet] | None = None) -> None:
        self.service = service
        self.settings = settings or DeploymentSettings()
        self.fleets = load_fleets(self.settings.fleets_file) if fleets is None else fleets
        stack = service.settings.stack
        self.repository = open_repository(self.settings.triton_repository, stack.s3_access_key, stack.s3_secret_key,
                                          stack.s3_region)
        self.triton_grpc = stack.triton_grpc
        # One change at a time per process: the registry's lease already serialises a model.
        self._lock = asyncio.Lock()

    async def on_stage_change(self, version: ModelVersion, stage: Stage, canary_share: float) -> Serving:
        async with self._lock:
            try:
                deployment = await self._deploy_triton(version, stage, canary_share)
            except Exception as err:
                deploy_outcomes.add(1, {"kind": "triton", "outcome": "failed", "reason": type(err).__name__})
                raise
            deploy_outcomes.add(1, {"kind": "triton", "outcome": "deployed", "reason": ""})
            rollouts = await self._rollouts(version) if stage == Stage.STAGE_PRODUCTION else []
            return Serving(lines=[deployment], rollouts=rollouts)

    # ---- Triton ---------------------------------------------------------------------------

    def _serving_after(self, version: ModelVersion, stage: Stage) -> tuple[str, str, set[str]]:
        """(production, canary, versions Triton must serve) once this change is applied."""
        with self.service.db.session() as s:
            prod_row = state.get_version_row(s, version.model_name, "production")
            canary_row = state.get_version_row(s, version.model_name, "staging")
        before = (prod_row["version"] if prod_row else "", canary_row["version"] if canary_row else "")
        prod, canary = before
        v = version.version
        if stage == Stage.STAGE_PRODUCTION:
            prod, canary = v, "" if canary == v else canary
        elif stage == Stage.STAGE_STAGING:
            canary = v
        elif stage == Stage.STAGE_ARCHIVED:
            prod, canary = ("" if prod == v else prod), ("" if canary == v else canary)
        # The outgoing production and canary serve until ingest has switched on models.promoted.v1.
        return prod, canary, {x for x in (prod, canary, *before) if x}

    async def _deploy_triton(self, version: ModelVersion, stage: Stage, canary_share: float) -> LineDeployment:
        model_name = version.model_name
        prod, canary, serving = self._serving_after(version, stage)
        triton_model = _triton_name(model_name)
        numbers = sorted(_triton_version(v) for v in serving)
        promoted = version.version if version.version in (prod, canary) else ""  # an outgoing version needs no check
        if serving:
            options = ServingOptions(
                max_batch_size=self.settings.triton_max_batch_size, instance_count=self.settings.triton_instance_count,
                max_queue_delay_us=self.settings.triton_max_queue_delay_us, versions=numbers,
            )
            present = set(await asyncio.to_thread(self.repository.versions, triton_model))
            # The promoted version is always (re)written last: that also rewrites the config's version policy.
            last = promoted or max(serving, key=_triton_version)
            order = [v for v in serving if v != last and _triton_version(v) not in present] + [last]
            for v in order:
                await self._write_version(model_name, v, options)
            await asyncio.to_thread(self._load_and_check, triton_model, _triton_version(promoted) if promoted else None)
        else:
            await asyncio.to_thread(_unload, self.triton_grpc, triton_model)
        line = version.dataset
        log.info("Triton %s serves %s (production %s, canary %s)", triton_model, numbers, prod or "-", canary or "-")
        return LineDeployment(line_id=line, triton_model=triton_model if serving else "", production_version=prod,
                              canary_version=canary, canary_share=canary_share if canary else 0.0)

    async def _write_version(self, model_name: str, version: str, options: ServingOptions) -> None:
        with self.service.db.session() as s:
            build = handlers_models_compiled.ok_build(s, model_name, version, self.settings.cloud_target)
            row = state.get_version_row(s, model_name, version)
        if build is None:
            raise DeploymentError(
                f"{model_name} v{version} has no verified {self.settings.cloud_target} build yet "
                "(the compiler publishes it on models.compiled.v1)"
            )
        (artifact,) = [a for a in build.artifacts if a.key.endswith("model.onnx")] or [None]
        if artifact is None:
            raise DeploymentError(f"build {build.build_id} has no model.onnx artifact")
        data = await self.service.objects.aio.get_bytes(artifact.bucket, artifact.key, artifact.sha256)
        classes = list(row["classes"]) if row else []
        with tempfile.TemporaryDirectory(prefix="lineloop-deploy-") as tmp:
            path = Path(tmp) / "model.onnx"
            path.write_bytes(data)
            await asyncio.to_thread(
                self.repository.write_model_version, _triton_name(model_name), _triton_version(version), path,
                flavour=self.settings.triton_flavour, labels=classes, options=options,
            )

    async def restore(self, serving: dict[str, set[str]]) -> list[str]:
        """Load again what Triton should serve and does not: a restarted Triton (explicit model
        control) comes back with nothing loaded, and every frame would go unscored until the next
        promotion. The repository still holds each model's files and its config with the version
        policy of the last change, so a load restores exactly that.

        Several registry replicas may do this at once: each loads only after seeing versions
        missing, and two loads of one model from the same repository leave the same versions
        serving. The deployer's lock keeps one replica's restore out of its own stage changes.
        """
        restored = []
        async with self._lock:
            for model_name, versions in sorted(serving.items()):
                triton_model = _triton_name(model_name)
                wanted = {_triton_version(v) for v in versions}
                if await asyncio.to_thread(self._restore_one, triton_model, wanted):
                    restored.append(model_name)
                    triton_restores.add(1, {"model": model_name})
        return restored

    def _restore_one(self, triton_model: str, wanted: set[int]) -> bool:
        with TritonControl(self.triton_grpc) as triton:
            missing = wanted - set(triton.ready_versions(triton_model))
            if not missing:
                return False
            log.warning("Triton does not serve %s versions %s (restarted?): loading them again", triton_model, sorted(missing))
            triton.load(triton_model)
            for version in sorted(wanted):
                triton.wait_ready(triton_model, version, timeout=self.settings.triton_ready_timeout_s)
            return True

    def _load_and_check(self, triton_model: str, promoted: int | None) -> None:
        with TritonControl(self.triton_grpc) as triton:
            triton.load(triton_model)
            if promoted is not None:
                triton.wait_ready(triton_model, promoted, timeout=self.settings.triton_ready_timeout_s)
                triton.smoke(triton_model, promoted)

    # ---- edge -----------------------------------------------------------------------------

    async def _rollouts(self, version: ModelVersion) -> list[EdgeRollout]:
        """One rollout per fleet running the model; a fleet without a verified build is skipped, loudly.
        The registry publishes them with the stage change they belong to."""
        rollouts = []
        for fleet in (f for f in self.fleets if f.runs(version.model_name)):
            with self.service.db.session() as s:
                build = handlers_models_compiled.ok_build(s, version.model_name, version.version, fleet.target)
            if build is None:
                deploy_outcomes.add(1, {"kind": "edge", "outcome": "skipped", "reason": "no_verified_build"})
                log.warning("no verified %s build of %s v%s: fleet %s keeps its model", fleet.target,
                            version.model_name, version.version, fleet.name)
                continue
            rollouts.append(await self._rollout(fleet, build))
        if rollouts:
            deploy_outcomes.add(len(rollouts), {"kind": "edge", "outcome": "planned", "reason": ""})
        return rollouts

    async def _rollout(self, fleet: Fleet, build: ModelCompiled) -> EdgeRollout:
        url = await self.service.objects.aio.presigned_get(
            build.manifest.bucket, build.manifest.key, timedelta(seconds=self.settings.manifest_url_ttl_s)
        )
        stages = []
        if fleet.pilot_gateways:
            stages.append(RolloutStage(name="pilot", gateway_ids=list(fleet.pilot_gateways),
                                       max_gateways=len(fleet.pilot_gateways)))
        stages.append(RolloutStage(name="all"))
        created = Timestamp()
        created.GetCurrentTime()
        return EdgeRollout(
            rollout_id=f"r-{uuid.uuid4().hex[:16]}", fleet=fleet.name, model_name=build.model_name,
            version=build.version, target=build.target, manifest_url=url, manifest_sha256=build.manifest.sha256,
            artifacts=list(build.artifacts), signature=build.signature, key_id=build.key_id, stages=stages,
            created_at=created,
        )


def _triton_name(model_name: str) -> str:
    return model_name.replace("/", "-")


def _triton_version(version: str) -> int:
    if not version.isdigit() or int(version) < 1:
        raise DeploymentError(f"registry version {version!r} is not a positive number (Triton numbers its versions)")
    return int(version)


def _unload(address: str, triton_model: str) -> None:
    with TritonControl(address) as triton:
        if triton.ready_versions(triton_model):
            triton.unload(triton_model)
