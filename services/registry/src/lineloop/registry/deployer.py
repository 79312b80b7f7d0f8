"""The seam between stage changes and serving.

Promotion code awaits `Deployer.on_stage_change` after it has claimed the model's
promotion lease and before it commits the new stages and publishes
`models.promoted.v1`. The deployer makes the serving side match (Triton load +
readiness + smoke inference, edge rollouts) and returns the resulting serving
picture; raising aborts the change and leaves every stage as it was.
The Triton/edge implementation lives in `deployment.py` (serving area).
"""

from __future__ import annotations

from typing import Protocol

from lineloop.v1.common_pb2 import Stage
from lineloop.v1.events_pb2 import LineDeployment
from lineloop.v1.registry_pb2 import ModelVersion


class Deployer(Protocol):
    async def on_stage_change(self, version: ModelVersion, stage: Stage, canary_share: float) -> list[LineDeployment]:
        """Serve `version` (as it will be after the change) at `stage`; return what serves each line.

        Called for every change to STAGING (canary at `canary_share`), PRODUCTION
        (including rollbacks) and ARCHIVED. An empty list means "nothing deployed
        here"; the registry then publishes its own picture with no Triton model name.
        """
        ...


class NoDeployment:
    """The default: the registry records stages; nothing is loaded anywhere."""

    async def on_stage_change(self, version: ModelVersion, stage: Stage, canary_share: float) -> list[LineDeployment]:
        return []
