"""The registry's background work, driven by its state (so a restart resumes it):
gate candidates that are waiting, then apply the `auto_promote` policy.

The gate has three outcomes (gate.py): passed (a candidate, for the policy), failed
(rejected) and not enough evidence: the candidate is held, with the reason (which classes
lack labelled test frames, about how many more) on the version and in its history; the
policy leaves it alone, a person may promote it.

The canary policy fails closed, on evidence the monitor owns (`GetModelHealth`: the frames
each version scored and its live accuracy; the registry does not count frames itself): a
canary that has served `canary_min_frames` frames is promoted only when the gate's rule, on
the live labels, shows it not worse than production, and archived if that evidence shows it
worse. Without the evidence (no monitor configured or reachable, too few labels) it is
held, with the reason on the version (`lineloop models show`) and counted in
lineloop_registry_canary_holds_total; a person's Promote or SetCanary ends either hold, and
the history says it overrode one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import metrics as otel_metrics
from sqlalchemy import select, update

from lineloop.registry import state
from lineloop.registry.evidence import independent_difference
from lineloop.registry.gate import (
    FAILED,
    NOT_ENOUGH_EVIDENCE,
    Evaluator,
    GateError,
    decide,
    judge,
    lacking_classes,
    outcome_of,
)
from lineloop.registry.settings import RegistrySettings
from lineloop.registry.stages import AUTO_ACTOR, RegistryError, Stages
from lineloop.runtime import Service
from lineloop.v1.events_pb2 import GateDecision, GateOutcome, ModelRegistered
from lineloop.v1.monitor_pb2 import GetModelHealthRequest, ModelHealth
from lineloop.v1.monitor_pb2_grpc import MonitorServiceStub
from lineloop.runtime.client import aio_channel as aio_grpc_channel

log = logging.getLogger(__name__)
_meter = otel_metrics.get_meter("lineloop.registry")
gate_decisions = _meter.create_counter("lineloop.registry.gate_decisions", unit="{decision}",
                                       description="Gate outcomes: passed, failed, not_enough_evidence")
gate_holds = _meter.create_counter(
    "lineloop.registry.gate_holds", unit="{candidate}",
    description="Candidates held by the gate for want of labelled test frames (not enough evidence), by model")
canary_holds = _meter.create_counter(
    "lineloop.registry.canary_holds", unit="{hold}",
    description="Canaries held by the policy for want of live evidence, by model and cause (counted when a hold starts or its cause changes)")
UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
NO_ANSWER = ("no_monitor", "monitor_unreachable", "monitor_error")  # hold causes: the monitor gave no answer


@dataclass(frozen=True)
class LiveVerdict:
    """What live accuracy says about a canary: `hold` (a cause) when there is no verdict yet."""

    text: str
    worse: bool = False
    hold: str = ""


class RegistryWorker:
    def __init__(self, service: Service, settings: RegistrySettings, stages: Stages) -> None:
        self.service = service
        self.settings = settings
        self.stages = stages
        self.evaluator = Evaluator(service.objects, settings)
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._next_serving_check = 0.0

    def wake(self) -> None:
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="registry-worker")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task

    async def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self.gate_pending()
                if self.settings.auto_promote:
                    await self.apply_policy()
                await self.restore_serving()
            except Exception:
                log.exception("registry worker pass failed; retrying")
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval_s)
            except TimeoutError:
                pass

    async def restore_serving(self) -> None:
        """Every `serving_check_s`: what should serve and Triton lost (a restart) is loaded again."""
        now = time.monotonic()
        if now < self._next_serving_check:
            return
        self._next_serving_check = now + self.settings.serving_check_s
        with self.service.db.session() as s:
            serving = state.serving_versions(s)
        if serving:
            await self.stages.deployer.restore(serving)

    async def gate_pending(self) -> None:
        with self.service.db.session() as s:
            pending = [dict(r) for r in s.execute(select(state.versions).where(state.versions.c.gate_state == "pending")
                                                  .order_by(state.versions.c.number)).mappings()]
        for row in pending:
            if self._stopping:
                return
            await self._gate(row)

    async def _gate(self, row: dict) -> None:
        model_name, version = row["model_name"], row["version"]
        with self.service.db.session() as s:
            prod = state.get_version_row(s, model_name, "production")
            judge = state.newest_dataset(s, model_name, row["dataset"])
        dataset_version = f"{row['dataset']}/{judge['dataset_version']}"
        try:
            test = await self.evaluator.test_split(row["dataset"], judge["dataset_version"], judge["manifest"])
            onnx = state.onnx_ref(row)
            candidate = await self.evaluator.evaluate(onnx.bucket, onnx.key, onnx.sha256, row["classes"], row["input_size"], test)
            baseline = None
            if prod is not None:
                ref = state.onnx_ref(prod)
                baseline = await self.evaluator.evaluate(ref.bucket, ref.key, ref.sha256, prod["classes"], prod["input_size"], test)
            decision = decide(candidate, baseline, self.settings, baseline_version=prod["version"] if prod else "",
                              dataset_version=dataset_version)
        except GateError as err:
            decision = GateDecision(passed=False, outcome=FAILED, reason=f"gate could not run: {err}",
                                    dataset_version=dataset_version)
        outcome = outcome_of(decision)
        trained = state.trained_of(row)
        stage = "rejected" if outcome == FAILED else "candidate"
        held = outcome == NOT_ENOUGH_EVIDENCE
        async with self.service.db.write() as s:
            moved = s.execute(update(state.versions).where(
                state.versions.c.model_name == model_name, state.versions.c.version == version,
                state.versions.c.gate_state == "pending",
            # A held candidate is not the policy's to promote: it waits for a person or a newer candidate.
            ).values(gate_state="decided", gate=decision.SerializeToString(), stage=stage,
                     auto_policy_done=1 if held else 0)).rowcount
            if not moved:
                return  # another replica decided it first
            if outcome == FAILED:
                state.add_transition(s, model_name, version, "candidate", "rejected", "registry:gate", decision.reason,
                                     decision.candidate)
            elif held:
                state.add_transition(s, model_name, version, "candidate", "candidate", "registry:gate", decision.reason,
                                     decision.candidate)
                state.hold(s, model_name, version, "not_enough_evidence", decision.reason)
            registered_at = Timestamp()
            registered_at.GetCurrentTime()
            self.service.bus.add_to_outbox(s, ModelRegistered(
                model_name=model_name, version=version, run_id=row["run_id"], dataset=row["dataset"],
                dataset_version=row["dataset_version"], parent_version=row["parent_version"],
                stage=state.STAGE_OF[stage], gate=decision, onnx=state.onnx_ref(row), classes=row["classes"],
                input_size=row["input_size"], registered_at=registered_at,
                # Passed on as training announced them: the compiler reads these, never rebuilds their keys.
                weights=trained.weights, dataset_manifest=trained.dataset_manifest))
        self.service.bus.relay.wake()
        name = GateOutcome.Name(outcome).removeprefix("GATE_OUTCOME_").lower()
        gate_decisions.add(1, {"outcome": name})
        if held:
            gate_holds.add(1, {"model": model_name})
            log.warning("candidate %s v%s held, label more test frames of: %s", model_name, version,
                        ", ".join(lacking_classes(decision)))
        log.info("gate for %s v%s: %s", model_name, version, decision.reason)

    async def apply_policy(self) -> None:
        with self.service.db.session() as s:
            fresh = [dict(r) for r in s.execute(select(state.versions).where(
                state.versions.c.gate_state == "decided", state.versions.c.stage == "candidate",
                state.versions.c.auto_policy_done == 0).order_by(state.versions.c.number)).mappings()]
            canaries = [dict(r) for r in s.execute(select(state.versions).where(
                state.versions.c.stage == "staging").order_by(state.versions.c.number)).mappings()]
        for row in fresh:
            with self.service.db.session() as s:
                has_prod = state.get_version_row(s, row["model_name"], "production") is not None
            if has_prod:
                await self._auto(row, "staging", "passed the gate: canary at the configured share")
            else:
                await self._auto(row, "production", "bootstrap: first version to meet the floors")
        for row in canaries:
            health = await self._health(row)
            if isinstance(health, LiveVerdict):  # no answer: neither frames served nor live accuracy is known
                await self._hold(row, health)
                continue
            served = await self._record_served(row, health)
            if served < self.settings.canary_min_frames:
                await self._unhold_answered(row)  # still serving its share; the monitor answers again
                continue
            what = f"canary served {served} frames (policy: {self.settings.canary_min_frames})"
            live = self._live_accuracy(row, health)
            if live.hold:
                await self._hold(row, live)
            elif live.worse:
                await self._auto(row, "archived", f"{what}, but {live.text}")
            else:
                await self._auto(row, "production", f"{what}; {live.text}")

    async def _health(self, canary: dict) -> ModelHealth | LiveVerdict:
        """The monitor's per-version picture of the canary's line: the one owner of canary evidence
        (frames each version scored and their live accuracy). A LiveVerdict with a hold when it has none."""
        if not self.settings.monitor_grpc:
            return LiveVerdict("no monitor configured (LINELOOP_REGISTRY_MONITOR_GRPC): frames served and live "
                               "accuracy unknown", hold="no_monitor")
        try:
            async with aio_grpc_channel(self.settings.monitor_grpc) as channel:
                return await MonitorServiceStub(channel).GetModelHealth(
                    GetModelHealthRequest(line_id=canary["dataset"], model_name=canary["model_name"]),
                    timeout=self.settings.monitor_timeout_s)
        except grpc.aio.AioRpcError as err:
            details = (err.details() or "")[:200]
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return ModelHealth(line_id=canary["dataset"], model_name=canary["model_name"])  # no frames seen yet
            if err.code() in UNREACHABLE:
                return LiveVerdict(f"monitor unreachable: {err.code().name} at {self.settings.monitor_grpc} ({details})",
                                   hold="monitor_unreachable")
            return LiveVerdict(f"monitor refused GetModelHealth: {err.code().name} ({details})", hold="monitor_error")

    async def _record_served(self, canary: dict, health: ModelHealth) -> int:
        """Frames the canary scored by the monitor's count, kept on the version for GetVersion to show."""
        served = next((v.frames_scored for v in health.versions if v.model_version == canary["version"]), 0)
        if served != canary["frames_served"]:
            async with self.service.db.write() as s:
                s.execute(update(state.versions).where(
                    state.versions.c.model_name == canary["model_name"], state.versions.c.version == canary["version"],
                    state.versions.c.stage == "staging").values(frames_served=served))
        return served

    def _live_accuracy(self, canary: dict, health: ModelHealth) -> LiveVerdict:
        """The canary against production by the monitor's live accuracy per version."""
        with self.service.db.session() as s:
            prod = state.get_version_row(s, canary["model_name"], "production")
        if prod is None:
            return LiveVerdict("no production version to compare with")
        by_version = {v.model_version: v for v in health.versions}
        c, p = by_version.get(canary["version"]), by_version.get(prod["version"])
        # The gate's rule on live labels. The monitor reports each version's accuracy on its own
        # labelled frames: different frames, so no pairing here: Newcombe's interval for two
        # independent proportions (statsmodels' confint_proportions_2indep(method="newcomb")).
        nc, np_ = (c.frames_labelled if c else 0), (p.frames_labelled if p else 0)
        kc, kp = (round(c.live_accuracy * nc) if c else 0), (round(p.live_accuracy * np_) if p else 0)
        conf, margin = self.settings.gate_confidence, self.settings.gate_margin_accuracy
        bounds = independent_difference(kc, nc, kp, np_, conf)
        outcome, _ = judge(bounds, -margin, higher_is_better=True)
        compared = (f"live accuracy {kc / nc if nc else 0.0:.3f} on {nc} labelled frames vs production "
                    f"v{prod['version']} {kp / np_ if np_ else 0.0:.3f} on {np_}")
        if outcome == NOT_ENOUGH_EVIDENCE:
            needed = bounds.frames_to_decide(-margin, higher_is_better=True)
            more = ("no labelled frames of one of them yet" if needed is None else
                    f"about {max(needed - nc, 1)} more labelled canary frames and {max(round(needed * np_ / nc) - np_, 0)} "
                    "more of production needed")
            return LiveVerdict(f"not enough evidence at {conf:.0%} confidence that canary v{canary['version']} is not "
                               f"worse than production by more than {margin:.2f}: {compared}; {more}",
                               hold="too_few_labels")
        verdict = (f"{compared} (difference {bounds.lower:+.3f} to {bounds.upper:+.3f} at {conf:.0%} confidence, "
                   f"margin {margin:.2f})")
        return LiveVerdict(verdict, worse=outcome == FAILED)

    async def _unhold_answered(self, row: dict) -> None:
        """End a hold for want of the monitor's answer once it answers (other holds wait for a verdict)."""
        with self.service.db.session() as s:
            held = state.get_hold(s, row["model_name"], row["version"])
        if held is not None and held["cause"] in NO_ANSWER:
            async with self.service.db.write() as s:
                state.release_hold(s, row["model_name"], row["version"])

    async def _hold(self, row: dict, live: LiveVerdict) -> None:
        """Keep the canary where it is and say why; written only when the reason changes."""
        model_name, version = row["model_name"], row["version"]
        with self.service.db.session() as s:
            held = state.get_hold(s, model_name, version)
        if held is not None and (held["cause"], held["reason"]) == (live.hold, live.text):
            return
        async with self.service.db.write() as s:
            still_canary = s.execute(select(state.versions.c.stage).where(
                state.versions.c.model_name == model_name, state.versions.c.version == version)).scalar() == "staging"
            started = still_canary and state.hold(s, model_name, version, live.hold, live.text)
        if started:
            canary_holds.add(1, {"model": model_name, "cause": live.hold})
            log.warning("canary %s v%s held: %s", model_name, version, live.text)

    async def _auto(self, row: dict, to: str, reason: str) -> None:
        try:
            await self.stages.change(row["model_name"], row["version"], to, actor=AUTO_ACTOR, reason=reason)
        except RegistryError as err:
            if err.reason in ("CONCURRENT_PROMOTION", "DEPLOYMENT_FAILED", "PROMOTION_LEASE_LOST", "STAGE_CHANGED"):
                log.warning("auto-promotion of %s v%s to %s postponed: %s", row["model_name"], row["version"], to, err.message)
                return  # retried on the next pass
            log.warning("auto-promotion of %s v%s to %s refused: %s", row["model_name"], row["version"], to, err.message)
        async with self.service.db.write() as s:
            s.execute(update(state.versions).where(state.versions.c.model_name == row["model_name"],
                                                   state.versions.c.version == row["version"])
                      .values(auto_policy_done=1))
