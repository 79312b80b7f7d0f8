"""Stage changes: promote, roll back, set the canary share, with full history.

Every change goes through `Stages.change`: validate and claim the model's
promotion lease (one transaction), let the deployer make serving match, then
apply all stage updates, transition rows and `models.promoted.v1` in one
transaction that re-checks the lease. Two concurrent changes of one model: the
second is refused (ABORTED) instead of interleaving.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from lineloop.registry import state
from lineloop.registry.deployer import Deployer
from lineloop.registry.settings import RegistrySettings
from lineloop.runtime import Service
from lineloop.storage.sql import utcnow
from lineloop.v1.common_pb2 import EvalMetrics
from lineloop.v1.events_pb2 import GateDecision, LineDeployment, ModelPromoted
from lineloop.v1.registry_pb2 import ModelVersion

AUTO_ACTOR = "registry:auto_promote"  # the actor of the worker's policy changes
PROMOTABLE_TO = {
    "production": {"candidate", "staging", "archived"},
    "staging": {"candidate", "archived", "staging"},
    "archived": {"candidate", "staging"},
}


class RegistryError(Exception):
    """A refused request: gRPC code, machine-readable reason, readable message."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.metadata = code, reason, message, metadata


class Stages:
    def __init__(self, service: Service, settings: RegistrySettings, deployer: Deployer) -> None:
        self.service = service
        self.settings = settings
        self.deployer = deployer

    async def change(self, model_name: str, version: str, to: str, *, actor: str, reason: str,
                     canary_share: float | None = None) -> ModelVersion:
        token = uuid.uuid4().hex
        db = self.service.db
        async with db.write() as s:
            row = self._version(s, model_name, version)
            steps, share = self._plan(s, row, to, canary_share)
            stale = utcnow() - timedelta(seconds=self.settings.promotion_lease_s)
            claimed = s.execute(update(state.models).where(
                state.models.c.model_name == model_name,
                or_(state.models.c.pending_change.is_(None), state.models.c.pending_since < stale),
            ).values(pending_change=token, pending_since=utcnow(), revision=state.models.c.revision + 1)).rowcount
            if not claimed:
                raise RegistryError(grpc.StatusCode.ABORTED, "CONCURRENT_PROMOTION",
                                    f"another stage change of {model_name} is in progress; retry when it has finished",
                                    model=model_name)
            after = state.version_proto(s, row)
            after.stage = state.STAGE_OF[to]
            after.canary_share = share
        try:
            serving = await self.deployer.on_stage_change(after, state.STAGE_OF[to], share)
        except Exception as err:
            async with db.write() as s:
                s.execute(update(state.models).where(state.models.c.model_name == model_name,
                                                     state.models.c.pending_change == token)
                          .values(pending_change=None, pending_since=None))
            raise RegistryError(grpc.StatusCode.UNAVAILABLE, "DEPLOYMENT_FAILED",
                                f"deploying {model_name} v{version} to {to} failed, nothing changed: {err}",
                                model=model_name, version=version) from err
        async with db.write() as s:
            held = s.execute(update(state.models).where(state.models.c.model_name == model_name,
                                                        state.models.c.pending_change == token)
                             .values(pending_change=None, pending_since=None)).rowcount
            if not held:
                raise RegistryError(grpc.StatusCode.ABORTED, "PROMOTION_LEASE_LOST",
                                    f"the change of {model_name} v{version} took longer than the promotion lease; "
                                    "nothing was changed", model=model_name, version=version)
            previous = row["stage"]
            for v, from_stage, to_stage, why, values in steps:
                current = s.execute(select(state.versions.c.stage).where(
                    state.versions.c.model_name == model_name, state.versions.c.version == v)).scalar_one()
                if current != from_stage:
                    raise RegistryError(grpc.StatusCode.ABORTED, "STAGE_CHANGED",
                                        f"{model_name} v{v} moved to {current} meanwhile; nothing was changed")
                state.set_stage(s, model_name, v, to_stage, **values)
                # Any stage change ends a hold (canary or gate); the history says when a person overrode one.
                held = state.release_hold(s, model_name, v)
                if v == version:
                    why = f"{reason} (overrides the hold: {held})" if held and actor != AUTO_ACTOR else reason
                state.add_transition(s, model_name, v, from_stage, to_stage, actor, why, self._metrics(s, model_name, v))
            picture = serving.lines or self._picture(s, model_name)
            promoted_at = Timestamp()
            promoted_at.GetCurrentTime()
            self.service.bus.add_to_outbox(s, ModelPromoted(
                model_name=model_name, version=version, stage=state.STAGE_OF[to], previous_stage=state.STAGE_OF[previous],
                actor=actor, reason=reason, deployments=picture, classes=row["classes"], promoted_at=promoted_at))
            for rollout in serving.rollouts:
                self.service.bus.add_to_outbox(s, rollout)
            result = state.version_proto(s, self._version(s, model_name, version))
        self.service.bus.relay.wake()
        return result

    async def rollback(self, model_name: str, *, actor: str, reason: str) -> ModelVersion:
        with self.service.db.session() as s:
            current = state.get_version_row(s, model_name, "production")
            if current is None:
                raise RegistryError(grpc.StatusCode.FAILED_PRECONDITION, "NO_PRODUCTION",
                                    f"{model_name} has no production version to roll back", model=model_name)
            previous = None
            for (v,) in s.execute(select(state.transitions.c.version).where(
                    state.transitions.c.model_name == model_name, state.transitions.c.to_stage == "production",
                    state.transitions.c.version != current["version"]).order_by(state.transitions.c.id.desc())):
                row = state.get_version_row(s, model_name, v)
                if row is not None and row["stage"] == "archived":
                    previous = row
                    break
        if previous is None:
            raise RegistryError(grpc.StatusCode.FAILED_PRECONDITION, "NO_PREVIOUS_PRODUCTION",
                                f"{model_name} has no earlier production version to roll back to "
                                f"(v{current['version']} is the only one)", model=model_name)
        why = f"rollback from v{current['version']}" + (f": {reason}" if reason else "")
        return await self.change(model_name, previous["version"], "production", actor=actor, reason=why)

    def _version(self, s: Session, model_name: str, version: str) -> dict:
        row = state.get_version_row(s, model_name, version)
        if row is None:
            raise RegistryError(grpc.StatusCode.NOT_FOUND, "UNKNOWN_VERSION",
                                f"{model_name} has no version {version!r}", model=model_name, version=version)
        return row

    def _plan(self, s: Session, row: dict, to: str, canary_share: float | None) -> tuple[list[tuple], float]:
        """[(version, from, to, why, column values)] for this change, and the canary share after it."""
        model_name, version, stage = row["model_name"], row["version"], row["stage"]
        if to not in PROMOTABLE_TO:
            raise RegistryError(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_STAGE",
                                f"cannot move a version to {to or 'an unspecified stage'}; use staging, production or archived")
        if stage == "rejected":
            gate = GateDecision.FromString(row["gate"]) if row["gate"] else GateDecision()
            raise RegistryError(grpc.StatusCode.FAILED_PRECONDITION, "VERSION_FAILED_GATE",
                                f"{model_name} v{version} failed the gate and cannot be promoted ({gate.reason})",
                                model=model_name, version=version)
        if row["gate_state"] != "decided":
            raise RegistryError(grpc.StatusCode.FAILED_PRECONDITION, "GATE_PENDING",
                                f"{model_name} v{version} has not been through the gate yet ({row['gate_state']})",
                                model=model_name, version=version)
        if stage not in PROMOTABLE_TO[to] or (to == stage and canary_share is None):
            hint = " (roll back or promote another version instead)" if stage == "production" else ""
            raise RegistryError(grpc.StatusCode.FAILED_PRECONDITION, "INVALID_TRANSITION",
                                f"{model_name} v{version} is {stage}; it cannot move to {to}{hint}",
                                model=model_name, version=version, stage=stage)
        share = 0.0
        if to == "staging":
            share = self.settings.canary_share if canary_share is None else canary_share
            if not 0.0 <= share <= 1.0:
                raise RegistryError(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_SHARE",
                                    f"canary share must be within 0..1, got {share}")
        steps: list[tuple] = []
        if to in ("production", "staging"):
            for other in state.list_version_rows(s, model_name, to):
                if other["version"] != version:
                    steps.append((other["version"], to, "archived", f"replaced by v{version}", {"canary_share": 0.0}))
        values = {"canary_share": share}
        if to == "staging" and stage != "staging":
            values["frames_served"] = 0  # the canary's count starts now
        steps.append((version, stage, to, "", values))
        return steps, share

    def _metrics(self, s: Session, model_name: str, version: str) -> EvalMetrics | None:
        row = state.get_version_row(s, model_name, version)
        if row is None or not row["gate"]:
            return None
        return GateDecision.FromString(row["gate"]).candidate

    def _picture(self, s: Session, model_name: str) -> list[LineDeployment]:
        """The registry's own serving picture when no deployer reports one."""
        prod = state.get_version_row(s, model_name, "production")
        canary = state.get_version_row(s, model_name, "staging")
        if prod is None and canary is None:
            return []
        line = (prod or canary)["dataset"]
        return [LineDeployment(line_id=line, production_version=prod["version"] if prod else "",
                               canary_version=canary["version"] if canary else "",
                               canary_share=canary["canary_share"] if canary else 0.0)]
