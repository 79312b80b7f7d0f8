"""`lineloop demo`: the whole loop on the embedded stack, narrated.

Everything here goes through the same doors a person uses: the `lineloop`
commands (gateway simulator, simulated QA) and the services' gRPC APIs. The
demo only chooses quicker policies (smaller windows and thresholds, fewer
epochs) through the services' ordinary environment settings.

Once the loop has closed, the demo measures it (demo_report): how long drift took to be
detected and answered, and accuracy before, under and after drift; its last line gives the
figures and the path of an HTML report.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import grpc
import typer
from rich.table import Table

from lineloop.cli.common import console, err_console, grpc_target
from lineloop.cli.demo_report import LabelledFrame, Measurement, TimelineEvent, last_line, phase_accuracy, write_report
from lineloop.cli.labels import SIM_BUCKET, object_store
from lineloop.cli.models import OUTCOMES, gate_summary
from lineloop.cli.stack import stack_auth
from lineloop.contracts.access import ROLES
from lineloop.runtime.client import ClientCredentials
from lineloop.runtime.client import channel as grpc_channel
from lineloop.stack.config import StackConfig
from lineloop.storage.objects import ObjectNotFound
from lineloop.v1 import (
    common_pb2,
    compiler_pb2,
    compiler_pb2_grpc,
    events_pb2,
    ingest_pb2,
    ingest_pb2_grpc,
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

# Frames a simulated QA audit labels per phase (a random sample, so the accuracy is not
# biased towards the uncertain frames the review queue puts first).
AUDIT_FRAMES = 60
AUDIT_WAIT_S = 120.0  # for the frames just sent to reach labeling

# Quicker policies for a loop that turns in minutes on a laptop. Anything set
# in the environment already wins.
DEMO_ENV = {
    # Enough labels that the first test split (~10%) can show a model meets the floors.
    "LINELOOP_LABELING_CUT_MIN_LABELS": "400",
    "LINELOOP_LABELING_CUT_MIN_LABELS_DRIFT": "200",
    "LINELOOP_LABELING_POLICY_INTERVAL_S": "3",
    # The demo has no second reviewer: labels the check flags are recorded with the version and
    # kept out of its test split at once, instead of holding the cut for half an hour.
    "LINELOOP_LABELING_LABEL_CHECK_TIMEOUT_S": "0",
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
        line: str = typer.Option("", "--line", help="Line id of the simulated packing line (default: the first "
                                                     "line-N this state has no model or dataset of)."),
        cameras: int = typer.Option(2, "--cameras", min=1),
        seed: int = typer.Option(7, "--seed", help="Same seed, same frames."),
        stop: bool = typer.Option(False, "--stop/--keep-running", help="Stop everything at the end."),
        timeout: float = typer.Option(600.0, "--timeout", help="Seconds to wait for any one stage."),
        budget: float = typer.Option(900.0, "--budget-s", min=1.0,
                                     help="Seconds for the whole loop to close (new production version after drift)."),
    ) -> None:
        """Run the loop: frames -> labels -> dataset -> model -> gate -> Triton + edge -> drift -> retrain."""
        for key, value in DEMO_ENV.items():
            os.environ.setdefault(key, value)
        started = time.monotonic()
        demo_run = Demo(line, cameras, seed, timeout, budget_deadline=started + budget, budget=budget)
        try:
            demo_run.run()
            try:
                measurement = demo_run.measure()
            except grpc.RpcError as exc:
                raise DemoFailed(f"measuring the loop: {exc.code().name}: {exc.details()}") from exc
            report = write_report(report_dir(), measurement)
        except DemoFailed as exc:
            err_console.print(f"[red]demo stopped:[/red] {exc}")
            err_console.print("logs: $LINELOOP_STATE_DIR/logs (default ./.lineloop/logs); `lineloop down` stops everything")
            raise typer.Exit(1) from None
        finally:
            if stop:
                _lineloop("down")
        console.print(f"\n[bold green]The loop turned[/bold green] in {demo_run.closed_after:.0f} s "
                      f"(measuring it took {time.monotonic() - started - demo_run.closed_after:.0f} s more).")
        if not stop:
            console.print("Everything is still running: try `lineloop models list --json`, "
                          f"`lineloop health show --line {demo_run.line}`, `lineloop datasets list`; `make down` stops it.")
        # The last line, for people and scripts alike (see demo_report.last_line).
        typer.echo(last_line(measurement, report))


class Demo:
    def __init__(self, line: str, cameras: int, seed: int, timeout: float, *, budget_deadline: float = float("inf"),
                 budget: float = 0.0) -> None:
        self.line = line
        self.model = line  # training names a model after its dataset, and labeling names datasets after lines
        self.cameras = cameras
        self.seed = seed
        self.timeout = timeout
        self.frames_sent = 0
        self.release_decided = False
        self.tokens: dict[str, str] = {}  # role -> token file, when the stack issues its own
        self.budget_deadline = budget_deadline  # monotonic: the loop must close by then
        self.budget = budget
        self.started = time.monotonic()
        self.started_at = datetime.now(UTC)
        self.closed_after = 0.0
        self.steps: list[TimelineEvent] = []
        self.ledgers: dict[str, Path] = {}  # phase -> the simulator's ledger of the frames it sent
        self.onset_launched: datetime | None = None

    def step(self, number: str, title: str) -> None:
        self.steps.append(TimelineEvent(datetime.now(UTC), "step", f"{number} {title}"))
        step(number, title)

    def run(self) -> None:
        self.step("1/8", "Stack and services")
        _lineloop("up")
        issuer = stack_auth()
        # With the stack's own tokens, each actor uses its role's: the demo reads as an ML engineer.
        self.tokens = {role: str(issuer.token_file(role)) for role in ROLES} if issuer else {}
        reader = ClientCredentials(token_file=self.tokens["ml-engineer"]) if issuer else None
        self.channels = {name: grpc_channel(grpc_target(name), reader) for name in
                         ("labeling", "training", "registry", "compiler", "monitor", "ingest")}
        annotator = ClientCredentials(token_file=self.tokens["annotator"]) if issuer else None
        self.annotator_channel = grpc_channel(grpc_target("labeling"), annotator)
        labeling = labeling_pb2_grpc.LabelingServiceStub(self.channels["labeling"])
        training = training_pb2_grpc.TrainingServiceStub(self.channels["training"])
        registry = registry_pb2_grpc.RegistryServiceStub(self.channels["registry"])
        compiler = compiler_pb2_grpc.CompilerServiceStub(self.channels["compiler"])
        monitor = monitor_pb2_grpc.MonitorServiceStub(self.channels["monitor"])
        if not self.line:
            # A second run on the same state starts a loop of its own: line-1's model already
            # has versions (and a production) that this run's gate and policy would meet.
            n = next(n for n in range(1, 10_000)
                     if not registry.ListVersions(registry_pb2.ListVersionsRequest(model_name=f"line-{n}")).versions
                     and not labeling.ListDatasets(labeling_pb2.ListDatasetsRequest(dataset=f"line-{n}")).versions)
            self.line = self.model = f"line-{n}"
            # Frames are stored by content: the same seed would send line-1's images again, which
            # ingest keeps as duplicates and labeling does not queue.
            self.seed += n - 1
            console.print(f"line {self.line}, seed {self.seed}"
                          + ("" if n == 1 else " (earlier runs used the lines and seeds before them)"))
        self.known_at_start = frozenset(
            v.version for v in registry.ListVersions(registry_pb2.ListVersionsRequest(model_name=self.model)).versions)
        known_versions = set(self.known_at_start)  # grows as the run registers versions; known_at_start does not
        known_datasets = {d.version for d in labeling.ListDatasets(labeling_pb2.ListDatasetsRequest(dataset=self.line)).versions}

        self.step("2/8", f"Gateway: {self.cameras} cameras on {self.line} send apples (no model yet: predictions are missing)")
        self.simulate(800)

        self.step("3/8", "Simulated QA labels the review queue; the labeling policy cuts a dataset version")
        # Exactly the policy's threshold: labels left over would trigger the
        # (lower) drift threshold later, before any drifted frame is labelled.
        _lineloop("labels", "simulate-qa", "--line", self.line, "--max", os.environ["LINELOOP_LABELING_CUT_MIN_LABELS"],
                  "--error-rate", "0.02", "--seed", str(self.seed), token_file=self.tokens.get("annotator"))
        dataset = self.wait("a new dataset version", lambda: _newest(
            labeling.ListDatasets(labeling_pb2.ListDatasetsRequest(dataset=self.line)).versions, known_datasets))
        known_datasets.add(dataset.version)
        console.print(f"dataset {dataset.dataset} {dataset.version}: classes {dict(dataset.class_counts)}, "
                      f"splits {dict(dataset.split_counts)}, manifest s3://{dataset.manifest.bucket}/{dataset.manifest.key}")

        self.step("4/8", "Training turns the dataset into a model; the registry gates it; the compiler builds it")
        first = self.follow_to_production(training, registry, compiler, known_versions)
        known_versions.add(first.version)

        self.step("5/8", "Triton now scores every frame on the line")
        self.simulate(200, ledger="undrifted")
        health = self.wait(f"frames scored by {self.model} v{first.version}", lambda: _scored_by(
            monitor.GetModelHealth(monitor_pb2.GetModelHealthRequest(line_id=self.line)), first.version))
        show_health(health)

        self.step("6/8", "The lens gets dirty: the monitor reports drift; labeling puts the drifted frames first")
        self.onset_launched = datetime.now(UTC)
        self.simulate(300, drift="dirty-lens", ledger="drifted")
        report = self.wait("drift on the line", lambda: _drifting(
            monitor.GetDriftReport(monitor_pb2.GetDriftReportRequest(line_id=self.line))))
        for event in report.recent[:1]:
            console.print(f"drift: {event.feature} PSI {event.score:.2f} > {event.threshold:.2f} ({event.detail})")

        self.step("7/8", "QA labels the drifted frames first; a new dataset, a new model, a canary, a new production version")
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
        self.closed_after = time.monotonic() - self.started
        self.first, self.second = first, second

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

    def simulate(self, frames: int, *, drift: str | None = None, quiet: bool = False, ledger: str = "") -> None:
        args = ["gateway", "simulate", "--line", self.line, "--cameras", str(self.cameras), "--fps", "40",
                "--frames", str(frames), "--seed", str(self.seed + self.frames_sent)]
        if drift:
            args += ["--drift", drift, "--drift-at", "0"]
        if ledger:
            # The frames' ids, so the demo can later tell which phase a labelled frame belongs to.
            path = report_dir() / f"frames-{ledger}-{self.seed + self.frames_sent}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
            self.ledgers[ledger] = path
            args += ["--ledger", str(path)]
        _lineloop(*args, quiet=quiet, token_file=self.tokens.get("gateway"))
        self.frames_sent += frames

    def measure(self) -> Measurement:
        """After the loop closed: drifted frames for the new model, a simulated QA audit of a random
        sample per phase, then the figures from what the services recorded."""
        self.step("8/8", f"Measuring the loop: drifted frames for v{self.second.version}, a QA audit, the report")
        labeling = labeling_pb2_grpc.LabelingServiceStub(self.channels["labeling"])
        registry = registry_pb2_grpc.RegistryServiceStub(self.channels["registry"])
        training = training_pb2_grpc.TrainingServiceStub(self.channels["training"])
        monitor = monitor_pb2_grpc.MonitorServiceStub(self.channels["monitor"])
        ingest = ingest_pb2_grpc.IngestServiceStub(self.channels["ingest"])
        m = Measurement(old_version=self.first.version, new_version=self.second.version)
        self.simulate(200, drift="dirty-lens", ledger="drifted-after")
        frames = {name: [json.loads(line)["frame_id"] for line in path.read_text().splitlines() if line.strip()]
                  for name, path in self.ledgers.items()}
        audited, unaudited = self.audit(frames)

        # accuracy: each frame the demo sent (its ledgers), with its effective human label and the
        # prediction ingest stored with it (LabelCreated.prediction), by phase (demo_report.phase_of).
        labelled: list[LabelledFrame] = []
        for name, ids in frames.items():
            for frame_id in ids:
                try:
                    reply = labeling.GetFrameLabels(labeling_pb2.GetFrameLabelsRequest(frame_id=frame_id))
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.NOT_FOUND:
                        raise DemoFailed(f"labels of {frame_id}: {exc.code().name}: {exc.details()}") from exc
                    continue  # never reached labeling: no label, no phase
                label = reply.effective
                if label.source not in GROUND_TRUTH:
                    continue
                prediction = next((h.prediction for h in reply.history if h.prediction.predicted_class), label.prediction)
                labelled.append(LabelledFrame(frame_id, name.startswith("drifted"), prediction.model_version,
                                              prediction.predicted_class, label.label_class))
        m.accuracy = phase_accuracy(labelled, m.old_version, m.new_version)
        for phase, value in m.accuracy.items():
            if value is None:
                m.notes.append(f"accuracy {phase}: n/a, no human-labelled frame of this phase (see the audit counts)")
        m.notes.append(f"QA audit: {audited} labels of randomly sampled frames (up to {AUDIT_FRAMES} labelled per phase, "
                       "the simulator's true classes); the rest are the review queue's picks, which favour uncertain "
                       "frames. The audit's labels count towards labeling's cut policy, so a further dataset version "
                       "(and run) may follow after the demo.")
        if unaudited:
            m.notes.append(f"QA audit: {unaudited} sampled frames were still unknown to labeling after {AUDIT_WAIT_S:.0f} s "
                           "and went unlabelled")

        # detect/recover onset: captured_at of the first drifted frame, as ingest stored it.
        drifted_ids = frames.get("drifted") or []
        try:
            if not drifted_ids:
                raise LookupError("no drifted frame in the ledger")
            first = ingest.GetFrame(ingest_pb2.GetFrameRequest(frame_id=drifted_ids[0])).frame
            m.onset, m.onset_source = _at(first.captured_at), f"captured_at of the first drifted frame {drifted_ids[0]} (ingest GetFrame)"
        except (grpc.RpcError, LookupError) as exc:
            m.onset, m.onset_source = self.onset_launched, "the moment the demo launched the drifted simulator (slightly early)"
            m.notes.append(f"onset: the first drifted frame's record was not readable ({exc}); used the simulator's launch time")
        if m.onset:
            m.events.append(TimelineEvent(m.onset, "drift", "drift onset: first drifted frame"))

        report = monitor.GetDriftReport(monitor_pb2.GetDriftReportRequest(line_id=self.line))
        detections = sorted((_at(d.detected_at), d) for d in report.recent if d.detected_at.seconds)
        after_onset = [at for at, _ in detections if m.onset and at >= m.onset]
        # detect: drift.detected.v1's own detected_at (as GetDriftReport lists it), not when the demo saw it.
        m.detected = after_onset[0] if after_onset else None
        if m.detected is None:
            m.notes.append("detect: n/a, GetDriftReport lists no drift.detected.v1 raised after the onset")
        for at, d in detections:
            if at >= self.started_at:
                m.events.append(TimelineEvent(at, "drift", f"drift.detected.v1 {d.feature} PSI {d.score:.2f} > {d.threshold:.2f}"))
        m.drift_events = [{"detected_at": at.isoformat(), "feature": d.feature, "score": d.score, "threshold": d.threshold,
                           "camera_id": d.camera_id, "model_version": d.model_version} for at, d in detections]
        m.drift_features = [{"feature": f.feature, "score": f.score, "threshold": f.threshold, "drifted": f.drifted}
                            for f in report.features]

        versions = registry.ListVersions(registry_pb2.ListVersionsRequest(model_name=self.model)).versions
        m.versions_registered = sum(v.version not in self.known_at_start for v in versions)
        for v in versions:
            if v.registered_at.seconds and _at(v.registered_at) >= self.started_at:
                m.events.append(TimelineEvent(_at(v.registered_at), "registered", f"v{v.version} registered (run {v.run_id})"))
            for t in v.history:
                if t.at.seconds and _at(t.at) >= self.started_at:
                    stage = common_pb2.Stage.Name(t.to_stage).removeprefix("STAGE_").lower()
                    m.events.append(TimelineEvent(_at(t.at), "stage", f"v{v.version} -> {stage} ({t.actor})"))
        # recover: the registry's record of the new version's move to production.
        promotions = [_at(t.at) for v in versions if v.version == m.new_version for t in v.history
                      if t.to_stage == common_pb2.STAGE_PRODUCTION and t.at.seconds]
        m.promoted = min(promotions) if promotions else None
        if m.promoted is None:
            m.notes.append(f"recover: n/a, the registry's history of v{m.new_version} has no move to production")

        for d in labeling.ListDatasets(labeling_pb2.ListDatasetsRequest(dataset=self.line)).versions:
            if d.created_at.seconds and _at(d.created_at) >= self.started_at:
                m.events.append(TimelineEvent(_at(d.created_at), "dataset", f"dataset {d.version}: {d.reason}"))
        for r in training.ListRuns(training_pb2.ListRunsRequest(model_name=self.model, limit=20)).runs:
            for what, ts in (("started", r.started_at), ("finished", r.finished_at)):
                if ts.seconds and _at(ts) >= self.started_at:
                    m.events.append(TimelineEvent(_at(ts), "run", f"run {r.run_id} on {r.dataset_version} {what}"))
        m.events.extend(self.steps)
        health = monitor.GetModelHealth(monitor_pb2.GetModelHealthRequest(line_id=self.line))
        m.health = [{"version": v.model_version, "frames_scored": v.frames_scored, "frames_labelled": v.frames_labelled,
                     "live_accuracy": v.live_accuracy} for v in health.versions]
        return m

    def audit(self, frames: dict[str, list[str]]) -> tuple[int, int]:
        """Simulated QA audits a random sample of each ledger's frames, labelling the simulator's
        true class (no deliberate errors: these labels are the yardstick). Labelling without a
        lease is the service's ordinary correction path. Returns the labels submitted, and the
        sampled frames labeling still did not know after AUDIT_WAIT_S."""
        stub = labeling_pb2_grpc.LabelingServiceStub(self.annotator_channel)
        objects = object_store()
        rng = random.Random(self.seed)
        submitted = 0
        deadline = time.monotonic() + AUDIT_WAIT_S
        unknown: set[str] = set()
        with console.status("simulated QA audits a sample of each phase's frames…"):
            for name, ids in frames.items():
                pending = rng.sample(ids, len(ids))
                labelled = 0
                while pending and labelled < AUDIT_FRAMES:
                    frame_id = pending.pop(0)
                    try:
                        if stub.GetFrameLabels(labeling_pb2.GetFrameLabelsRequest(frame_id=frame_id)).effective.source in GROUND_TRUTH:
                            labelled += 1
                            continue
                        truth = json.loads(objects.get_bytes(SIM_BUCKET, f"truth/{frame_id}.json"))["label"]
                        stub.SubmitLabel(labeling_pb2.SubmitLabelRequest(
                            frame_id=frame_id, label_class=truth, annotator="sim-qa-audit", note="simulated QA audit"))
                    except (grpc.RpcError, ObjectNotFound) as exc:
                        code = exc.code() if isinstance(exc, grpc.RpcError) else None
                        if code not in (None, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
                            raise DemoFailed(f"QA audit of {frame_id}: {code.name}: {exc.details()}") from exc
                        if time.monotonic() > deadline:
                            unknown.add(frame_id)  # measured on the frames that did arrive; the report says so
                            continue
                        pending.append(frame_id)  # not ingested/offered yet: come back to it
                        time.sleep(0.2)
                        continue
                    labelled += 1
                    submitted += 1
        return submitted, len(unknown)

    def wait(self, what: str, probe: Callable[[], T | None]) -> T:
        deadline = min(time.monotonic() + self.timeout, self.budget_deadline)
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
                    if deadline == self.budget_deadline:
                        raise DemoFailed(f"the loop did not close within the budget of {self.budget:.0f} s "
                                         f"(--budget-s): still waiting for {what}")
                    raise DemoFailed(f"no {what} after {self.timeout:.0f} s")
                time.sleep(1.0)


def _lineloop(*args: str, quiet: bool = False, token_file: str | None = None) -> None:
    env = {**os.environ, "LINELOOP_TOKEN_FILE": token_file} if token_file else None
    result = subprocess.run([sys.executable, "-m", "lineloop.cli.main", *args],
                            stdout=subprocess.DEVNULL if quiet else None, env=env)
    if result.returncode != 0:
        raise DemoFailed(f"`lineloop {' '.join(args)}` exited {result.returncode}")


def report_dir() -> Path:
    return StackConfig.from_env().state_dir / "demo-report"


GROUND_TRUTH = (events_pb2.LABEL_SOURCE_HUMAN, events_pb2.LABEL_SOURCE_IMPORT)


def _at(ts) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


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
