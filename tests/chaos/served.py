"""The chaos line's model: a production model on Triton, reached through the loop itself, and
retraining in flight while training, the registry or the compiler is killed.

Without it the loop under chaos serves no model: killing Triton touches nothing, and training,
the registry and the compiler are killed idle. `serve_line` turns the loop once, as a plant
would: frames, simulated QA labels, the labeling policy's cut, training, the gate, the
compiler's build, a release manager's promotion (the gate holds a first model on a small test
split), until ingest scores the line's frames. `Retraining` starts a run on the served dataset
before a fault row, says when the killed service has work in flight, and afterwards proves the
run's work was done exactly once: the run finished, one version registered for it with its
gate decided, one verified triton-onnx build of it.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import grpc
from sqlalchemy import select

from chaoslib import REPLICA, Checker, Loop, Traffic, read_ledger
from lineloop.v1 import (
    common_pb2,
    compiler_pb2,
    compiler_pb2_grpc,
    events_pb2,
    labeling_pb2,
    labeling_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)

log = logging.getLogger("chaos")

T = TypeVar("T")
FINISHED = (training_pb2.RUN_STATE_SUCCEEDED, training_pb2.RUN_STATE_FAILED, training_pb2.RUN_STATE_CANCELLED)
# Frames ingested this long after scoring resumed must all be scored: batches that failed
# against a restarting Triton just before are past by then.
SCORING_RESUME_SLACK_S = 10.0
# The services whose work is a retraining run (training, then the registry's gate, then the compiler).
RETRAINED = ("training", "registry", "compiler")


@dataclasses.dataclass(frozen=True)
class ServedModel:
    model: str
    version: str
    dataset: str
    dataset_version: str


class ControlPlane:
    """The services' gRPC APIs where the loop runs them (auth is off in chaos)."""

    def __init__(self, loop: Loop) -> None:
        self.addresses = {name: f"127.0.0.1:{loop.env[f'LINELOOP_{name.upper()}_GRPC_PORT']}"
                          for name in ("labeling", "training", "registry", "compiler")}
        self._channels = {name: grpc.insecure_channel(address) for name, address in self.addresses.items()}
        self.labeling = labeling_pb2_grpc.LabelingServiceStub(self._channels["labeling"])
        self.training = training_pb2_grpc.TrainingServiceStub(self._channels["training"])
        self.registry = registry_pb2_grpc.RegistryServiceStub(self._channels["registry"])
        self.compiler = compiler_pb2_grpc.CompilerServiceStub(self._channels["compiler"])

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def versions_of_run(self, model: str, run_id: str) -> list:
        return [v for v in self.registry.ListVersions(registry_pb2.ListVersionsRequest(model_name=model), timeout=10).versions
                if v.run_id == run_id]

    def builds(self, model: str, version: str, target: str = "triton-onnx") -> list:
        return [b for b in self.compiler.ListBuilds(compiler_pb2.ListBuildsRequest(model_name=model, version=version),
                                                    timeout=10).builds if b.target == target]


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 2.0) -> T:
    """Poll `probe` until it returns something; a service mid-restart (UNAVAILABLE) is waited out."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            found = probe()
            if found:
                return found
        except grpc.RpcError as exc:
            last = f"{exc.code().name}: {exc.details()}"
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout:.0f} s" + (f" (last: {last})" if last else ""))
        time.sleep(interval)


def serve_line(loop: Loop, control: ControlPlane, ledger: Path, line: str, *, seed: int, labels: int = 240,
               timeout: float = 900.0) -> ServedModel:
    """Turn the loop once for `line` until its frames are scored by a production model."""
    started = time.monotonic()
    checker = Checker(loop)
    traffic = Traffic(loop, ledger, line=line, frames=2 * labels, rate=16.0, seed=seed).start()
    traffic.join(timeout=timeout)
    sent = {e["frame_id"] for e in read_ledger(ledger) if e["run_id"] == traffic.run_id}
    if checker.wait_caught_up(sent, timeout) is None:
        raise TimeoutError(f"the served line's first {len(sent)} frames were not in effect after {timeout:.0f} s")
    subprocess.run([sys.executable, "-m", "lineloop.cli.main", "labels", "simulate-qa", "--line", line,
                    "--max", str(labels), "--seed", str(seed), "--json", "--target", control.addresses["labeling"]],
                   check=True, stdout=subprocess.DEVNULL, timeout=timeout)
    dataset = wait_for("the labeling policy's first dataset version", lambda: control.labeling.ListDatasets(
        labeling_pb2.ListDatasetsRequest(dataset=line), timeout=10).versions, timeout)[0]
    run = wait_for("the first training run", lambda: next((
        r for r in control.training.ListRuns(training_pb2.ListRunsRequest(model_name=line, limit=5), timeout=10).runs
        if r.state in FINISHED), None), timeout)
    if run.state != training_pb2.RUN_STATE_SUCCEEDED:
        raise RuntimeError(f"the served line's first run {run.run_id} ended {training_pb2.RunState.Name(run.state)}: {run.error}")
    version = wait_for("the gate's decision", lambda: next((
        v for v in control.versions_of_run(line, run.run_id) if v.gate.reason), None), timeout)
    if version.stage == common_pb2.STAGE_REJECTED:
        raise RuntimeError(f"{line} v{version.version} failed the gate: {version.gate.reason}")
    if version.stage != common_pb2.STAGE_PRODUCTION:
        # The gate holds a first model it cannot judge on a small test split: a release manager
        # promotes it once its Triton build is verified, as in `make demo`.
        wait_for(f"v{version.version}'s verified triton-onnx build", lambda: [
            b for b in control.builds(line, version.version) if b.status == events_pb2.BUILD_STATUS_OK], timeout)
        control.registry.Promote(registry_pb2.PromoteRequest(
            model_name=line, version=version.version, to_stage=common_pb2.STAGE_PRODUCTION, actor="chaos-release-manager",
            reason="make chaos: the chaos line needs a served model"), timeout=60)
    served = ServedModel(line, version.version, dataset.dataset, dataset.version)
    # Ingest learns the deployment from models.promoted.v1: probe until its frames are scored.
    probes = iter(range(1, 1000))

    def scored() -> bool:
        probe = Traffic(loop, ledger, line=line, frames=16, rate=16.0, seed=seed + next(probes)).start()
        probe.join(timeout=120)
        ids = {e["frame_id"] for e in read_ledger(ledger) if e["run_id"] == probe.run_id}
        checker.wait_caught_up(ids, 120)
        return any(version == served.version for _, version in scoring(checker, ids).values())

    wait_for(f"frames scored by {line} v{served.version}", scored, timeout, interval=0.0)
    log.info("served line: %s v%s on %s %s, in %.0f s", line, served.version, served.dataset, served.dataset_version,
             time.monotonic() - started)
    return served


def scoring(checker: Checker, frame_ids: set[str]) -> dict[str, tuple[datetime, str]]:
    """frame id -> (ingested at, the model version that scored it; "" when unscored), from the monitor."""
    t = checker.table("monitor", "monitor_frames")
    out = {}
    with checker.engine("monitor").connect() as conn:
        rows = conn.execute(select(t.c.frame_id, t.c.ingested_at, t.c.predicted_class, t.c.model_version))
        for frame_id, at, predicted, version in rows:
            if frame_id in frame_ids:
                out[frame_id] = (at if at.tzinfo else at.replace(tzinfo=UTC), version if predicted else "")
    return out


def check_scoring(loop: Loop, ledger: Path, line: str, frame_ids: set[str], fault_from: datetime, undone: datetime,
                  *, seed: int, timeout: float = 180.0) -> tuple[str, str]:
    """(defect, note): on a served line every frame is scored except while a fault stops scoring.

    Scoring has resumed once a frame ingested after the fault was undone is scored; frames of
    the row's own traffic may all come before that (Triton takes seconds to start and the
    registry to load production again), so small probe runs follow until one is scored. Every
    frame ingested before the fault, or more than SCORING_RESUME_SLACK_S after scoring resumed,
    must be scored."""
    checker = Checker(loop)
    ids = set(frame_ids)
    deadline = time.monotonic() + timeout
    probe = 0
    while True:
        seen = scoring(checker, ids)
        resumed = min((at for at, version in seen.values() if version and at > undone), default=None)
        if resumed is not None:
            break
        if time.monotonic() > deadline:
            return f"scoring had not resumed {timeout:.0f} s after the fault was undone", ""
        probe += 1
        run = Traffic(loop, ledger, line=line, frames=16, rate=16.0, seed=seed * 100 + probe).start()
        run.join(timeout=120)
        probe_ids = {e["frame_id"] for e in read_ledger(ledger) if e["run_id"] == run.run_id}
        checker.wait_caught_up(probe_ids, 120)
        ids |= probe_ids
    last_gap = resumed + timedelta(seconds=SCORING_RESUME_SLACK_S)
    judged = [version for at, version in seen.values() if at < fault_from or at > last_gap]
    unscored = sum(1 for v in judged if not v)
    note = (f"scoring resumed {(resumed - undone).total_seconds():.0f} s after undo"
            f"{f' ({probe} probe runs)' if probe else ''}; {len(judged) - unscored}/{len(judged)} frames outside the gap scored")
    if unscored:
        return f"{unscored} frames unscored outside the fault's gap", note
    return "", note


class Retraining:
    """A retraining run of the served model, started before a fault row that kills `target`."""

    def __init__(self, control: ControlPlane, served: ServedModel, target: str) -> None:
        self.control = control
        self.served = served
        self.target = target.removesuffix(REPLICA)
        self.run_id = ""

    @staticmethod
    def wanted(fault_target: str) -> bool:
        return fault_target.removesuffix(REPLICA) in RETRAINED

    def start(self) -> Retraining:
        run = self.control.training.StartRun(training_pb2.StartRunRequest(
            model_name=self.served.model, dataset=self.served.dataset, dataset_version=self.served.dataset_version,
            requested_by="chaos"), timeout=30)
        self.run_id = run.run_id
        log.info("retraining: run %s started; %s is killed while it has work of it in flight", run.run_id, self.target)
        return self

    def _run(self):
        return self.control.training.GetRun(training_pb2.GetRunRequest(run_id=self.run_id), timeout=10)

    def in_flight(self) -> bool:
        """Whether the fault's target now has work of this run: training trains it, the registry
        gates the model it produced, the compiler builds the version registered from it."""
        if self.target == "training":
            return self._run().state == training_pb2.RUN_STATE_RUNNING
        if self.target == "registry":
            return self._run().state == training_pb2.RUN_STATE_SUCCEEDED
        return bool(self.control.versions_of_run(self.served.model, self.run_id))

    def wait_in_flight(self, timeout: float) -> str:
        """A note for the row: when the work was in flight, or that it never was in `timeout`."""
        started = time.monotonic()
        try:
            wait_for(f"{self.target}'s work of run {self.run_id}", self.in_flight, timeout, interval=0.5)
        except TimeoutError as exc:
            return f"{exc}; injected anyway"
        return f"{self.target} busy with run {self.run_id} after {time.monotonic() - started:.0f} s"

    def settle(self, timeout: float) -> tuple[str, str]:
        """(defect, note) once the run's work is done: empty defect when it was done exactly once."""
        try:
            run = wait_for(f"run {self.run_id} to finish", lambda: (r := self._run()).state in FINISHED and r, timeout)
            if run.state != training_pb2.RUN_STATE_SUCCEEDED:
                return f"run {self.run_id} ended {training_pb2.RunState.Name(run.state)}: {run.error}", ""
            version = wait_for(f"the version of run {self.run_id} and its gate decision", lambda: next((
                v for v in self.control.versions_of_run(self.served.model, self.run_id) if v.gate.reason), None), timeout)
            versions = self.control.versions_of_run(self.served.model, self.run_id)
            if len(versions) != 1:
                return f"run {self.run_id} registered {len(versions)} times: {[v.version for v in versions]}", ""
            builds = wait_for(f"v{version.version}'s triton-onnx build to finish", lambda: (
                b := self.control.builds(self.served.model, version.version)) and all(
                x.status != events_pb2.BUILD_STATUS_UNSPECIFIED for x in b) and b, timeout)
        except (TimeoutError, grpc.RpcError) as exc:
            return str(exc)[:300], ""
        if len(builds) != 1 or builds[0].status != events_pb2.BUILD_STATUS_OK:
            return (f"v{version.version}'s triton-onnx builds: "
                    f"{[(b.build_id, events_pb2.BuildStatus.Name(b.status), b.reason) for b in builds]}"), ""
        outcome = events_pb2.GateOutcome.Name(version.gate.outcome).removeprefix("GATE_OUTCOME_").lower()
        return "", (f"run {self.run_id} {len(run.epochs)} epochs -> v{version.version} once, gate {outcome}, "
                    f"{common_pb2.Stage.Name(version.stage).removeprefix('STAGE_').lower()}, 1 build ok")
