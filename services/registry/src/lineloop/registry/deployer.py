"""The seam between stage changes and serving.

Promotion code awaits `Deployer.on_stage_change` after it has claimed the model's
promotion lease and before it commits the new stages and publishes
`models.promoted.v1`. The deployer makes the serving side match (Triton load +
readiness + smoke inference) and returns the resulting serving picture and the edge
rollouts to publish; raising aborts the change and leaves every stage as it was.
The rollouts go to the outbox in the same transaction as the stage change, so a
change that is refused afterwards (lease lost) announces nothing.
The Triton/edge implementation lives in `deployment.py` (serving area).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from lineloop.v1.common_pb2 import Stage
from lineloop.v1.events_pb2 import EdgeRollout, LineDeployment
from lineloop.v1.registry_pb2 import ModelVersion


@dataclass
class Serving:
    """What serves each line after a change, and the rollouts it sends to edge fleets."""

    lines: list[LineDeployment] = field(default_factory=list)
    rollouts: list[EdgeRollout] = field(default_factory=list)


class Deployer(Protocol):
    async def on_stage_change(self, version: ModelVersion, stage: Stage, canary_share: float) -> Serving:
        """Serve `version` (as it will be after the change) at `stage`.

        Called for every change to STAGING (canary at `canary_share`), PRODUCTION
        (including rollbacks) and ARCHIVED. Empty `lines` means "nothing deployed
        here"; the registry then publishes its own picture with no Triton model name.
        """
        ...

    async def restore(self, serving: dict[str, set[str]]) -> list[str]:
        """Make the runtime serve `serving` (model -> versions) again where it lost them; the models reloaded."""
        ...


class NoDeployment:
    """Stages only, nothing loaded anywhere: for a registry run without serving (tests, audits)."""

    async def on_stage_change(self, version: ModelVersion, stage: Stage, canary_share: float) -> Serving:
        return Serving()

    async def restore(self, serving: dict[str, set[str]]) -> list[str]:
        return []
