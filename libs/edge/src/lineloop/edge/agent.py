"""The gateway's edge agent: installs signed builds from `edge.rollouts.v1`, predicts locally.

A rollout is installed only when it is for this gateway's fleet and target profile, its
manifest hashes to the announced sha256, carries a valid signature by a trusted key, and
every artifact hashes as the manifest says. Anything else is refused: the rollout is
dead-lettered with the reason (so the refusal is visible centrally), counted, and the
model that was running keeps running. Installing builds the new session aside and swaps
one reference, so capture and prediction never stop. The rollout's staged plan decides
whether and when a gateway installs (`admitting_stage`): pilots at once, the rest later.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from opentelemetry import metrics

from lineloop.bus import Bus, EventContext, KafkaSecurity, Reject
from lineloop.edge.fleets import load_fleets
from lineloop.edge.manifest import BuildManifest, ManifestError, check_artifact, load_trusted_keys, verify_manifest
from lineloop.edge.settings import EdgeSettings
from lineloop.storage.objects import ObjectStore, ObjectStoreError
from lineloop.v1.common_pb2 import PREDICTION_SOURCE_EDGE, PREDICTION_STATUS_MISSING, PREDICTION_STATUS_OK, Prediction
from lineloop.v1.events_pb2 import EdgeRollout
from lineloop.vision import ImageRejected, decode_image, to_model_input

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
# Where the embedded stack's compiler leaves its development public key (lineloop.compiler.signing).
DEV_PUBLIC_KEY = Path("compiler") / "signing-key.pub.pem"
_meter = metrics.get_meter("lineloop.edge")
rollouts_applied = _meter.create_counter(
    "lineloop.edge.rollouts",
    unit="{rollout}",
    description="Rollouts seen by an edge agent. Attributes: fleet, outcome (installed, refused, skipped), reason.",
)


class AgentSetupError(ValueError):
    """The agent cannot start: an unknown fleet, or trusted keys that cannot be loaded."""


def _http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - presigned http(s) URL from the registry
        return response.read()


@dataclasses.dataclass(frozen=True)
class InstalledModel:
    manifest: BuildManifest
    session: ort.InferenceSession
    path: Path


class EdgeAgent:
    """One gateway's model: install from rollouts, predict on captured frames."""

    def __init__(
        self,
        *,
        fleet: str,
        gateway_id: str,
        target: str,
        objects: ObjectStore,
        trusted_keys: Mapping[str, Ed25519PublicKey],
        install_dir: Path,
        stage_delay_s: float = 0.0,
        fetch_url: Callable[[str], bytes] = _http_get,
    ) -> None:
        self.fleet = fleet
        self.gateway_id = gateway_id
        self.target = target
        self.objects = objects
        self.trusted_keys = dict(trusted_keys)
        self.install_dir = Path(install_dir)
        self.stage_delay_s = stage_delay_s
        self.fetch_url = fetch_url
        self.refusals: list[ManifestError] = []
        self._model: InstalledModel | None = None

    @property
    def model(self) -> InstalledModel | None:
        return self._model

    def subscribe(self, bus: Bus) -> None:
        """Consume rollouts in this gateway's own group: every gateway must see every rollout."""
        bus.handler(EdgeRollout, group=f"edge-agent-{self.gateway_id}")(self.on_rollout)

    async def on_rollout(self, rollout: EdgeRollout, ctx: EventContext | None = None) -> None:
        labels = {"fleet": rollout.fleet}
        if rollout.fleet != self.fleet or rollout.target != self.target:
            rollouts_applied.add(1, {**labels, "outcome": "skipped", "reason": "other_fleet_or_target"})
            return
        stage = admitting_stage(rollout, self.gateway_id)
        if stage is None:
            rollouts_applied.add(1, {**labels, "outcome": "skipped", "reason": "not_in_plan"})
            return
        wait_s = self._stage_wait_s(rollout, stage)
        if wait_s > 0:
            log.info("rollout %s: gateway %s is in stage %d, installs in %.1f s", rollout.rollout_id,
                     self.gateway_id, stage, wait_s)
            await asyncio.sleep(wait_s)
        try:
            await asyncio.to_thread(self.install, rollout)
        except ManifestError as err:
            self.refusals.append(err)
            rollouts_applied.add(1, {**labels, "outcome": "refused", "reason": err.reason})
            log.error(
                "refused rollout %s (%s %s): %s", rollout.rollout_id, rollout.model_name, rollout.version, err,
                extra={"rollout_id": rollout.rollout_id, "reason": err.reason},
            )
            raise Reject(err.reason, f"gateway {self.gateway_id}: {err.detail}") from err
        rollouts_applied.add(1, {**labels, "outcome": "installed", "reason": ""})

    def _stage_wait_s(self, rollout: EdgeRollout, stage: int) -> float:
        """Stage k installs k x `stage_delay_s` after the rollout was created (else received)."""
        wait_s = self.stage_delay_s * stage
        if wait_s > 0 and rollout.HasField("created_at"):
            # Timed from creation, so a gateway catching up on old rollouts does not wait again.
            elapsed_s = time.time() - rollout.created_at.ToNanoseconds() / 1e9
            return min(max(wait_s - elapsed_s, 0.0), wait_s)  # a gateway clock behind waits no longer than the delay
        return wait_s

    def install(self, rollout: EdgeRollout) -> InstalledModel:
        """Download, verify and swap in the rollout's build (blocking; run it in a thread)."""
        try:
            manifest_bytes = self.fetch_url(rollout.manifest_url)
        except OSError as err:
            raise ManifestError("manifest_unreachable", f"{rollout.manifest_url}: {err}") from err
        manifest = verify_manifest(
            manifest_bytes, rollout.signature, rollout.key_id, self.trusted_keys, rollout.manifest_sha256
        )
        if (manifest.model_name, manifest.version, manifest.target) != (rollout.model_name, rollout.version, rollout.target):
            raise ManifestError(
                "manifest_mismatch",
                f"manifest is {manifest.model_name} {manifest.version} {manifest.target}, rollout announces "
                f"{rollout.model_name} {rollout.version} {rollout.target}",
            )
        artifact = manifest.artifact(MODEL_FILE)
        announced = {ref.key: ref.sha256 for ref in rollout.artifacts}
        if announced.get(artifact.key, artifact.sha256) != artifact.sha256:
            raise ManifestError("artifact_sha256_mismatch", f"rollout and manifest disagree on {artifact.key}")
        try:
            # The manifest's hash, not the store's metadata, decides what is genuine.
            data = self.objects.get_bytes(artifact.bucket, artifact.key)
        except ObjectStoreError as err:
            if getattr(err, "actual", None):
                raise ManifestError("artifact_sha256_mismatch", str(err)) from err
            raise ManifestError("artifact_unreachable", str(err)) from err
        check_artifact(artifact, data)

        folder = self.install_dir / manifest.model_name / manifest.version / manifest.target
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomically(folder / MODEL_FILE, data)
        _write_atomically(folder / "manifest.json", manifest_bytes)
        try:
            session = _session(folder / MODEL_FILE)
        except Exception as err:  # onnxruntime raises its own Fail/InvalidGraph...: a signed file it cannot run
            raise ManifestError("artifact_unloadable", f"{artifact.key}: {err}"[:2000]) from err
        installed = InstalledModel(manifest, session, folder)
        self._model = installed  # the swap: predictions in flight finish on the old session
        _write_atomically(self.install_dir / "current.json", json.dumps({"path": str(folder)}).encode())
        log.info("installed %s %s (%s) from rollout %s", manifest.model_name, manifest.version, manifest.target, rollout.rollout_id)
        return installed

    def restore(self) -> InstalledModel | None:
        """Resume the model installed before a restart, if its files still hash as the manifest says."""
        pointer = self.install_dir / "current.json"
        if not pointer.exists():
            return None
        folder = Path(json.loads(pointer.read_bytes())["path"])
        manifest = BuildManifest.from_bytes((folder / "manifest.json").read_bytes())
        check_artifact(manifest.artifact(MODEL_FILE), (folder / MODEL_FILE).read_bytes())
        self._model = InstalledModel(manifest, _session(folder / MODEL_FILE), folder)
        return self._model

    def predict(self, image_bytes: bytes) -> Prediction:
        """The gateway's prediction for one frame (status MISSING, with the reason, when it has none).

        Blocking (run it in a thread) and thread-safe: it reads the installed model once, so
        a frame is predicted and reported by exactly one model even while a rollout swaps it.
        """
        installed = self._model
        if installed is None:
            return Prediction(status=PREDICTION_STATUS_MISSING, missing_reason="no model installed on this gateway",
                              source=PREDICTION_SOURCE_EDGE)
        manifest = installed.manifest
        try:
            images = to_model_input(decode_image(image_bytes).image, manifest.input_size)[None]
        except ImageRejected as err:
            return Prediction(status=PREDICTION_STATUS_MISSING, missing_reason=f"undecodable image: {err}",
                              source=PREDICTION_SOURCE_EDGE, model_name=manifest.model_name,
                              model_version=manifest.version)
        started = time.perf_counter()
        probabilities, embedding = installed.session.run(["probabilities", "embedding"], {"images": images})
        latency_ms = (time.perf_counter() - started) * 1000.0
        scores = probabilities[0]
        return Prediction(
            status=PREDICTION_STATUS_OK,
            source=PREDICTION_SOURCE_EDGE,
            model_name=manifest.model_name,
            model_version=manifest.version,
            predicted_class=manifest.classes[int(np.argmax(scores))],
            scores={name: float(score) for name, score in zip(manifest.classes, scores)},
            embedding=[float(v) for v in embedding[0]],
            latency_ms=latency_ms,
        )


def admitting_stage(rollout: EdgeRollout, gateway_id: str) -> int | None:
    """Index of the first stage of the rollout's plan that admits the gateway; None: none does.

    The registry plans "pilot: the named gateways (max_gateways = their count), then all".
    A stage naming gateways admits the first `max_gateways` of them (all when 0). A stage
    naming none admits every gateway, unless it is capped (max_gateways > 0): a gateway
    cannot count its fleet, so it waits for a later stage rather than overrun the cap.
    A rollout without a plan is for every gateway at once.
    """
    if not rollout.stages:
        return 0
    for index, stage in enumerate(rollout.stages):
        if stage.gateway_ids:
            admitted = gateway_id in stage.gateway_ids[: stage.max_gateways or None]
        else:
            admitted = stage.max_gateways <= 0
        if admitted:
            return index
    return None


@contextlib.asynccontextmanager
async def running_agent(*, fleet: str, gateway_id: str, kafka_bootstrap: str, objects: ObjectStore, state_dir: Path,
                        trusted_key_files: list[Path] | None = None, fleets_file: Path | None = None,
                        settings: EdgeSettings | None = None,
                        kafka_security: KafkaSecurity | None = None) -> AsyncIterator[EdgeAgent]:
    """An agent for one gateway of `fleet`, consuming rollouts until the block ends.

    The target is the fleet's (fleets configuration). Trusted keys: `trusted_key_files`,
    else `settings.trusted_keys` (LINELOOP_EDGE_TRUSTED_KEYS), else the embedded compiler's
    development public key. Installed models live under `<state_dir>/edge/<gateway>` and the
    last one is resumed on start. Raises AgentSetupError before connecting to anything.
    """
    settings = settings or EdgeSettings()
    fleets = {f.name: f for f in load_fleets(fleets_file)}
    if fleet not in fleets:
        raise AgentSetupError(f"unknown fleet {fleet!r}; configured fleets: {', '.join(sorted(fleets)) or 'none'}")
    key_files = trusted_key_files or settings.trusted_keys or [Path(state_dir) / DEV_PUBLIC_KEY]
    try:
        keys = load_trusted_keys(key_files)
    except (OSError, ValueError) as err:
        raise AgentSetupError(f"gateway {gateway_id} cannot load its trusted keys: {err}") from err
    agent = EdgeAgent(fleet=fleet, gateway_id=gateway_id, target=fleets[fleet].target, objects=objects,
                      trusted_keys=keys, install_dir=Path(state_dir) / "edge" / gateway_id,
                      stage_delay_s=settings.stage_delay_s)
    try:
        agent.restore()
    except (ManifestError, OSError) as err:
        log.warning("gateway %s starts without a model: the installed one failed its check (%s)", gateway_id, err)
    bus = Bus(kafka_bootstrap, source=f"lineloop/edge-{gateway_id}", security=kafka_security or KafkaSecurity())
    agent.subscribe(bus)
    await bus.start()
    try:
        yield agent
    finally:
        await bus.stop()


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # a gateway also captures and encodes; leave it cores
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)

