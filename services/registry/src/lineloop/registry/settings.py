"""Registry settings: environment `LINELOOP_REGISTRY_*`."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from lineloop.registry.deployment import DeploymentSettings
from lineloop.contracts.catalogue import service
from lineloop.runtime import ServiceSettings, service_config


class RegistrySettings(ServiceSettings):
    service_name: ClassVar[str] = "registry"
    model_config = service_config("registry")

    # Policy: a passing candidate becomes the canary, the canary production after
    # `canary_min_frames` served frames (the monitor's count); with no production yet, a
    # candidate that meets the floors becomes production directly.
    auto_promote: bool = True
    canary_share: float = 0.1
    canary_min_frames: int = 200
    # Live accuracy (the monitor's, against human labels) decides too, by the gate's rule below
    # on the labelled frames each version served: a canary that has served its frames is promoted
    # once it is shown not worse than production, archived once shown worse, and held until then,
    # with the reason in `lineloop models show`; a person may still promote or archive it by hand.
    # The monitor owns canary evidence: frames served per version and live accuracy. Empty: no
    # monitor, so no evidence; canaries are held (a person promotes them).
    monitor_grpc: str = f"127.0.0.1:{service('monitor').grpc_port}"
    monitor_timeout_s: float = 5.0
    # The gate (services/registry/README.md, "How the gate decides"): every check is a one-sided confidence bound at
    # `gate_confidence`. Against production, the bound of candidate minus production (paired on
    # the same test frames) must clear minus the margin: passed when it does, failed when the
    # opposite bound shows the candidate worse by more than the margin, "not enough evidence"
    # otherwise. Margins are absolute, in proportion points.
    gate_confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    gate_margin_accuracy: float = Field(default=0.02, ge=0.0, lt=1.0)
    gate_margin_class: float = Field(default=0.05, ge=0.0, lt=1.0)  # per-class recall and the ok false-positive rate
    # Bootstrap floors, for the first production version: judged by the same bounds.
    floor_accuracy: float = 0.8
    floor_ok_false_positive_rate: float = 0.1
    # A promotion that has not finished deploying after this long is taken to have crashed.
    promotion_lease_s: float = 300.0
    poll_interval_s: float = 1.0
    # How often the registry checks that Triton still serves production and canary versions, and
    # loads them again if not (a restarted Triton comes back with no model loaded).
    serving_check_s: float = Field(default=10.0, gt=0)
    eval_threads: int = 0  # 0: every core
    cache_dir: Path | None = None
    # Triton and edge fleets (same LINELOOP_REGISTRY_ prefix, e.g. LINELOOP_REGISTRY_TRITON_FLAVOUR).
    deployment: DeploymentSettings = Field(default_factory=DeploymentSettings)

    @property
    def frame_cache_dir(self) -> Path:
        return self.cache_dir or (self.stack.state_dir / "registry" / "frame-cache")
