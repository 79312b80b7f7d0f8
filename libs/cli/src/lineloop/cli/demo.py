"""`lineloop demo`: the whole loop on the embedded stack, narrated.

Everything here goes through the same doors a person uses: the `lineloop`
commands (gateway simulator, simulated QA) and the services' gRPC APIs. The
demo only chooses quicker policies (smaller windows and thresholds, fewer
epochs) through the services' ordinary environment settings.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import grpc
import typer
from rich.table import Table

from lineloop.cli.common import console, err_console, grpc_target
from lineloop.cli.models import OUTCOMES, gate_summary
from lineloop.cli.stack import stack_auth
from lineloop.contracts.access import ROLES
from lineloop.runtime.client import ClientCredentials
from lineloop.runtime.client import channel as grpc_channel
from lineloop.v1 import (
    common_pb2,
    compiler_pb2,
    compiler_pb2_grpc,
    events_pb2,
    labeling_pb2,
    labeling_pb2_grpc,
    monitor_pb2,
    monitor_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)

T = TypeVar("T")

# Quicker policies for a loop that turns in minutes on a laptop. Anything set
# in the environment already wins.
DEMO_ENV = {
    # Enough labels that the first test split (~10%) can show a model meets the floors.
    "LINELOOP_LABELING_CUT_MIN_LABELS": "400",
    "LINELOOP_LABELING_CUT_MIN_LABELS_DRIFT": "200",
    "LINELOOP_LABELING_POLICY_INTERVAL_S": "3",
    "LINELOOP_REGISTRY_CANARY_MIN_FRAMES": "60",
    # The gate keeps its defaults (95 % confidence): the demo's test splits hold 40-60 human
    # labels, about a dozen of them defects, too few to show per class that a model is not
    # worse, so the gate may well answer "not enough evidence". The demo shows that outcome
    # and lets a release manager decide, rather than lowering the bar until it passes.
    "LINELOOP_MONITOR_REFERENCE_FRAMES": "120",
    "LINELOOP_MONITOR_CURRENT_FRAMES": "60",
    "LINELOOP_MONITOR_EVALUATE_EVERY": "20",
}


class DemoFailed(Exception):
    pass


def register(root: typer.Typer) -> None:
    @root.command("demo")
    def demo(
        line: str = typer.Option("line-1", "--line", help="Line id of the simulated packing line."),
        cameras: int = typer.Option(2, "--cameras", min=1),
        seed: int = typer.Option(7, "--seed", help="Same seed, same frames."),
        stop: bool = typer.Option(False, "--stop/--keep-running", help="Stop everything at the end."),
        timeout: float = typer.Option(600.0, "--timeout", help="Seconds to wait for any one stage."),
    ) -> None:
        """Run the loop: frames -> labels -> dataset -> model -> gate -> Triton + edge -> drift -> retrain."""
        for key, value in DEMO_ENV.items():
            os.environ.setdefault(key, value)
        started = time.monotonic()
        try:
            Demo(line, cameras, seed, timeout).run()
        except DemoFailed as exc:
            err_console.print(f"[red]demo stopped:[/red] {exc}")
            err_console.print("logs: $LINELOOP_STATE_DIR/logs (default ./.lineloop/logs); `lineloop down` stops everything")
            raise typer.Exit(1) from None
        finally:
            if stop:
                _lineloop("down")
        console.print(f"\n[bold green]The loop turned[/bold green] in {time.monotonic() - started:.0f} s.")
        if not stop:
            console.print("Everything is still running: try `lineloop models list --json`, "
                          f"`lineloop health show --line {line}`, `lineloop datasets list`; `make down` stops it.")


class Demo:
    def __init__(self, line: str, cameras: int, seed: int, timeout: float) -> None:
        self.line = line
        self.model = line  # training names a model after its dataset, and labeling names datasets after lines
        self.cameras = cameras
        self.seed = seed
        self.timeout = timeout
        self.frames_sent = 0
        self.release_decided = False
        self.tokens: dict[str, str] = {}  # role -> token file, when the stack issues its own

    def run(self) -> None:
        step("1/7", "Stack and services")
        _lineloop("up")
        issuer = stack_auth()
        # With the stack's own tokens, each actor uses its role's: the demo reads as an ML engineer.
        self.tokens = {role: str(issuer.token_file(role)) for role in ROLES} if issuer else {}
        reader = ClientCredentials(token_file=self.tokens["ml-engineer"]) if issuer else None
        self.channels = {name: grpc_channel(grpc_target(name), reader) for name in
                         ("labeling", "training", "registry", "compiler", "monitor")}
        labeling = labeling_pb2_grpc.LabelingServiceStub(self.channels["labeling"])
        training = training_pb2_grpc.TrainingServiceStub(self.channels["training"])
        registry = registry_pb2_grpc.RegistryServiceStub(self.channels["registry"])
        compiler = compiler_pb2_grpc.CompilerServiceStub(self.channels["compiler"])
        monitor = monitor_pb2_grpc.MonitorServiceStub(self.channels["monitor"])
        known_versions = {v.version for v in registry.ListVersions(registry_pb2.ListVersionsRequest(model_name=self.model)).versions}
        known_datasets = {d.version for d in labeling.ListDatasets(labeling_pb2.ListDatasetsRequest(dataset=self.line)).versions}

        step("2/7", f"Gateway: {self.cameras} cameras on {self.line} send apples (no model yet: predictions are missing)")
        self.simulate(800)

        step("3/7", "Simulated QA labels the review queue; the labeling policy cuts a dataset version")
        # Exactly the policy's threshold: labels left over would trigger the
        # (lower) drift threshold later, before any drifted frame is labelled.
        _lineloop("labels", "simulate-qa", "--line", self.line, "--max", os.environ["LINELOOP_LABELING_CUT_MIN_LABELS"],
                  "--error-rate", "0.02", "--seed", str(self.seed), token_file=self.tokens.get("annotator"))
        dataset = self.wait("a new dataset version", lambda: _newest(
            labeling.ListDatasets(labeling_pb2.ListDatasetsRequest(dataset=self.line)).versions, known_datasets))
        known_datasets.add(dataset.version)
        console.print(f"dataset {dataset.dataset} {dataset.version}: classes {dict(dataset.class_counts)}, "
                      f"splits {dict(dataset.split_counts)}, manifest s3://{dataset.manifest.bucket}/{dataset.manifest.key}")

        step("4/7", "Training turns the dataset into a model; the registry gates it; the compiler builds it")
        first = self.follow_to_production(training, registry, compiler, known_versions)
        known_versions.add(first.version)

        step("5/7", "Triton now scores every frame on the line")
        self.simulate(200)
        health = self.wait(f"frames scored by {self.model} v{first.version}", lambda: _scored_by(
            monitor.GetModelHealth(monitor_pb2.GetModelHealthRequest(line_id=self.line)), first.version))
        show_health(health)

        step("6/7", "The lens gets dirty: the monitor reports drift; labeling puts the drifted frames first")
        self.simulate(300, drift="dirty-lens")
        report = self.wait("drift on the line", lambda: _drifting(
            monitor.GetDriftReport(monitor_pb2.GetDriftReportRequest(line_id=self.line))))
        for event in report.recent[:1]:
            console.print(f"drift: {event.feature} PSI {event.score:.2f} > {event.threshold:.2f} ({event.detail})")

        step("7/7", "QA labels the drifted frames first; a new dataset, a new model, a canary, a new production version")
        _lineloop("labels", "simulate-qa", "--line", self.line, "--max", str(2 * int(os.environ["LINELOOP_LABELING_CUT_MIN_LABELS_DRIFT"])),
                  "--error-rate", "0.02", "--seed", str(self.seed + 1), token_file=self.tokens.get("annotator"))
        drifted = self.wait("a dataset version with the drifted frames", lambda: _newest(
            labeling.ListDatasets(labeling_pb2.ListDatasetsRequest(dataset=self.line)).versions, known_datasets))
        # The loop's answer to the drift is the model trained on the dataset with the drifted frames.
        second = self.follow_to_production(training, registry, compiler, known_versions, feed_canary=True,
                                           dataset_version=drifted.version)
        show_versions(registry.ListVersions(registry_pb2.ListVersionsRequest(model_name=self.model)).versions)
        show_health(monitor.GetModelHealth(monitor_pb2.GetModelHealthRequest(line_id=self.line)))
        console.print(f"production: {self.model} v{second.version}")

    def follow_to_production(self, training, registry, compiler, known_versions: set[str], *, feed_canary: bool = False,
                             dataset_version: str = ""):
        run = self.wait("a training run to finish", lambda: _finished_run(
            training.ListRuns(training_pb2.ListRunsRequest(model_name=self.model, limit=5)).runs, dataset_version))
        if run.state != training_pb2.RUN_STATE_SUCCEEDED:
            raise DemoFailed(f"run {run.run_id} ended {training_pb2.RunState.Name(run.state)}: {run.error}")
        t = run.test_metrics
        console.print(f"run {run.run_id}: {len(run.epochs)} epochs, test accuracy {t.accuracy:.3f}, "
                      f"ok false-positive rate {t.ok_false_positive_rate:.3f}")
        version = self.wait("the registry's gate decision", lambda: _newest(
            [v for v in registry.ListVersions(registry_pb2.ListVersionsRequest(model_name=self.model)).versions
             if v.gate.reason and v.run_id == run.run_id], known_versions))  # a decided gate always gives its reason
        show_gate(version)
        if version.stage == common_pb2.STAGE_REJECTED:
            raise DemoFailed(f"v{version.version} failed the gate: {version.gate.reason}")
        if version.gate.outcome == events_pb2.GATE_OUTCOME_NOT_ENOUGH_EVIDENCE:
            self.decide_held(compiler, version)

        def promoted():
            if feed_canary:
                # The lens is still dirty: the canary serves its share of these.
                self.simulate(80, drift="dirty-lens", quiet=True)
            v = registry.GetVersion(registry_pb2.GetVersionRequest(model_name=self.model, version=version.version))
            if v.hold_reason and v.stage == common_pb2.STAGE_STAGING and not self.release_decided:
                # Fail closed: the registry holds a canary it cannot judge on live evidence (here,
                # too few human labels of its frames). A release manager decides, and the
                # history keeps that the decision overrode the hold.
                console.print(f"v{v.version} held by the registry: {v.hold_reason}")
                _lineloop("models", "promote", self.model, v.version, "--to", "production", "--reason",
                          "release manager: trained on the drifted frames; canary served without errors",
                          token_file=self.tokens.get("release-manager"))
                self.release_decided = True
                return None
            return v if v.stage == common_pb2.STAGE_PRODUCTION else None

        version = self.wait(f"v{version.version} to reach production", promoted)
        builds = compiler.ListBuilds(compiler_pb2.ListBuildsRequest(model_name=self.model, version=version.version)).builds
        show_builds(builds)
        return version

    def decide_held(self, compiler, version) -> None:
        """The gate held the candidate: too few labelled test frames to tell. A release manager
        decides (the history keeps that the decision overrode the hold): the first version goes
        to production, a later one becomes the canary, so live labels judge it next."""
        console.print(f"v{version.version} held by the registry: {version.hold_reason or version.gate.reason}")
        self.wait(f"v{version.version}'s verified triton-onnx build", lambda: [
            b for b in compiler.ListBuilds(compiler_pb2.ListBuildsRequest(model_name=self.model, version=version.version)).builds
            if b.target == "triton-onnx" and b.status == events_pb2.BUILD_STATUS_OK])
        to = "staging" if version.gate.baseline_version else "production"
        _lineloop("models", "promote", self.model, version.version, "--to", to, "--reason",
                  f"release manager: the demo's test split is too small for the gate to decide; {to} to watch it live",
                  token_file=self.tokens.get("release-manager"))

    def simulate(self, frames: int, *, drift: str | None = None, quiet: bool = False) -> None:
        args = ["gateway", "simulate", "--line", self.line, "--cameras", str(self.cameras), "--fps", "40",
                "--frames", str(frames), "--seed", str(self.seed + self.frames_sent)]
        if drift:
            args += ["--drift", drift, "--drift-at", "0"]
        _lineloop(*args, quiet=quiet, token_file=self.tokens.get("gateway"))
        self.frames_sent += frames

    def wait(self, what: str, probe: Callable[[], T | None]) -> T:
        deadline = time.monotonic() + self.timeout
        with console.status(f"waiting for {what}…"):
            while True:
                try:
                    found = probe()
                except grpc.RpcError as exc:
                    if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND):
                        raise DemoFailed(f"{what}: {exc.code().name}: {exc.details()}") from exc
                    found = None
                if found:
                    return found
                if time.monotonic() > deadline:
                    raise DemoFailed(f"no {what} after {self.timeout:.0f} s")
                time.sleep(1.0)


def _lineloop(*args: str, quiet: bool = False, token_file: str | None = None) -> None:
    env = {**os.environ, "LINELOOP_TOKEN_FILE": token_file} if token_file else None
    result = subprocess.run([sys.executable, "-m", "lineloop.cli.main", *args],
                            stdout=subprocess.DEVNULL if quiet else None, env=env)
    if result.returncode != 0:
        raise DemoFailed(f"`lineloop {' '.join(args)}` exited {result.returncode}")


def _newest(items, known: set[str]):
    fresh = [i for i in items if i.version not in known]
    return max(fresh, key=lambda i: i.version) if fresh else None


def _finished_run(runs, dataset_version: str = ""):
    """The newest run (of `dataset_version`, when given), once it has finished."""
    done = (training_pb2.RUN_STATE_SUCCEEDED, training_pb2.RUN_STATE_FAILED, training_pb2.RUN_STATE_CANCELLED)
    runs = [r for r in runs if not dataset_version or r.dataset_version == dataset_version]
    if runs and runs[0].state in done:
        return runs[0]
    return None


def _scored_by(health, version: str):
    return health if any(v.model_version == version and v.frames_scored for v in health.versions) else None


def _drifting(report):
    return report if report.recent else None


def step(number: str, title: str) -> None:
    console.rule(f"[bold]{number}[/bold] {title}")


def show_gate(version) -> None:
    gate = version.gate
    against = f"against v{gate.baseline_version}" if gate.baseline_version else "against the bootstrap floors"
    console.print(f"v{version.version} gate {against}: {gate_summary(gate)}")
    table = Table("check", "candidate", "baseline", "bounds", "margin", "frames", "outcome")
    for check in gate.checks:
        table.add_row(check.name, f"{check.candidate:.3f}", f"{check.baseline:.3f}",
                      f"{check.lower:+.3f} … {check.upper:+.3f}", f"{check.margin:.2f}", str(check.frames),
                      OUTCOMES.get(check.outcome, "-"))
    console.print(table)


def show_builds(builds) -> None:
    table = Table("target", "status", "agreement", "max abs err", "p50 ms", "p99 ms", "reason")
    for b in builds:
        v = b.verification
        table.add_row(b.target, events_pb2.BuildStatus.Name(b.status).removeprefix("BUILD_STATUS_").lower(),
                      f"{v.top1_agreement:.3f}", f"{v.max_abs_error:.2e}", f"{v.latency_p50_ms:.2f}",
                      f"{v.latency_p99_ms:.2f}", b.reason)
    console.print(table)


def show_health(health) -> None:
    table = Table("version", "frames scored", "labelled", "live accuracy", "mean confidence")
    for v in health.versions:
        table.add_row(v.model_version, str(v.frames_scored), str(v.frames_labelled),
                      f"{v.live_accuracy:.3f}" if v.frames_labelled else "-", f"{v.mean_confidence:.3f}")
    console.print(table)


def show_versions(versions) -> None:
    table = Table("version", "stage", "dataset", "test accuracy", "history")
    for v in versions:
        history = " → ".join(common_pb2.Stage.Name(t.to_stage).removeprefix("STAGE_").lower() for t in v.history)
        table.add_row(v.version, common_pb2.Stage.Name(v.stage).removeprefix("STAGE_").lower(),
                      v.dataset_version, f"{v.gate.candidate.accuracy:.3f}", history)
    console.print(table)
