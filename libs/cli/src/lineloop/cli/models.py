"""`lineloop models list|show|promote|rollback|canary`: versions, the gate, stages and history."""

from __future__ import annotations

import getpass

import grpc
import typer
from rich.table import Table

from lineloop.cli.common import console, grpc_target, print_json, rpc_errors
from lineloop.runtime.client import channel as grpc_channel
from lineloop.v1 import registry_pb2 as pb
from lineloop.v1 import registry_pb2_grpc
from lineloop.v1.common_pb2 import Stage
from lineloop.v1.events_pb2 import BuildStatus, GateDecision, GateOutcome

app = typer.Typer(no_args_is_help=True)

TARGET = typer.Option(None, "--target", help="Registry gRPC address (default: $LINELOOP_REGISTRY_GRPC or 127.0.0.1:50054).")
JSON = typer.Option(False, "--json", help="Print JSON.")
ACTOR = typer.Option(None, "--actor", help="Who makes the change (default: your user name); kept in the history.")
STAGES = {"candidate": Stage.STAGE_CANDIDATE, "staging": Stage.STAGE_STAGING, "canary": Stage.STAGE_STAGING,
          "production": Stage.STAGE_PRODUCTION, "archived": Stage.STAGE_ARCHIVED, "rejected": Stage.STAGE_REJECTED}
NAMES = {Stage.STAGE_UNSPECIFIED: "-", Stage.STAGE_CANDIDATE: "candidate", Stage.STAGE_STAGING: "[cyan]staging[/cyan]",
         Stage.STAGE_PRODUCTION: "[green]production[/green]", Stage.STAGE_ARCHIVED: "archived",
         Stage.STAGE_REJECTED: "[red]rejected[/red]"}


OUTCOMES = {GateOutcome.GATE_OUTCOME_PASSED: "[green]passed[/green]", GateOutcome.GATE_OUTCOME_FAILED: "[red]failed[/red]",
            GateOutcome.GATE_OUTCOME_NOT_ENOUGH_EVIDENCE: "[yellow]not enough evidence[/yellow]"}


def gate_outcome(gate: GateDecision, *, color: bool = False) -> str:
    """passed, failed, not enough evidence, or pending (no decision yet)."""
    if not gate.reason:
        return "pending"
    outcome = gate.outcome or (GateOutcome.GATE_OUTCOME_PASSED if gate.passed else GateOutcome.GATE_OUTCOME_FAILED)
    text = OUTCOMES[outcome]
    return text if color else text.split("]", 1)[1].rsplit("[", 1)[0]


def gate_summary(gate: GateDecision) -> str:
    """The outcome, where and at what confidence, then the reason without repeating the outcome."""
    outcome = gate_outcome(gate)
    detail = gate.reason
    if detail.startswith(outcome) and ": " in detail:
        detail = detail.split(": ", 1)[1]
    where = f" on {gate.dataset_version}" if gate.dataset_version else ""
    confidence = f" at {gate.confidence:.0%} confidence" if gate.confidence else ""
    return f"{gate_outcome(gate, color=True)}{where}{confidence} — {detail}"


def _stub(target: str) -> tuple[registry_pb2_grpc.RegistryServiceStub, grpc.Channel]:
    channel = grpc_channel(target)
    return registry_pb2_grpc.RegistryServiceStub(channel), channel


def _stage(name: str) -> Stage:
    if name not in STAGES:
        raise typer.BadParameter(f"{name!r}; one of {', '.join(STAGES)}")
    return STAGES[name]


def _show_version(v: pb.ModelVersion) -> None:
    console.print(f"[bold]{v.model_name} v{v.version}[/bold] · {NAMES[v.stage]} · aliases {', '.join(v.aliases) or '-'}")
    console.print(f"run {v.run_id} · dataset {v.dataset} {v.dataset_version} · parent {v.parent_version or '-'}"
                  + (f" · canary share {v.canary_share:.0%} · frames served {v.frames_served}" if v.stage == Stage.STAGE_STAGING else ""))
    if v.hold_reason:
        since = v.held_since.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
        then = ("the policy decides once the evidence exists" if v.stage == Stage.STAGE_STAGING
                else "the gate judges the next candidate, trained on more labels")
        console.print(f"[yellow]held[/yellow] since {since}: {v.hold_reason}\n"
                      f"  ({then}; `lineloop models promote` decides now)")
    g = v.gate
    console.print(f"gate: {gate_summary(g)}")
    checks = Table("check", "candidate", "production/floor", "bounds (cand. − prod. / value)", "margin", "frames", "outcome",
                   "more frames needed")
    for c in g.checks:
        checks.add_row(c.name, f"{c.candidate:.4f}", f"{c.baseline:.4f}", f"{c.lower:+.4f} … {c.upper:+.4f}",
                       f"{c.margin:.2f}", str(c.frames), OUTCOMES.get(c.outcome, "-"),
                       f"~{c.more_frames_needed}" if c.more_frames_needed else "-")
    console.print(checks)
    history = Table("when", "from", "to", "who", "why", "accuracy", "ok FPR", title="history")
    for h in v.history:
        history.add_row(h.at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"), NAMES[h.from_stage], NAMES[h.to_stage], h.actor,
                        h.reason, f"{h.metrics.accuracy:.3f}" if h.HasField("metrics") else "-",
                        f"{h.metrics.ok_false_positive_rate:.3f}" if h.HasField("metrics") else "-")
    console.print(history)
    builds = Table("target", "build", "status", "agreement", "p50 ms", "reason", title="builds")
    for b in v.builds:
        measured = b.verification.samples > 0
        builds.add_row(b.target, b.build_id, BuildStatus.Name(b.status).removeprefix("BUILD_STATUS_").lower(),
                       f"{b.verification.top1_agreement:.4f}" if measured else "-",
                       f"{b.verification.latency_p50_ms:.2f}" if measured else "-", b.reason)
    console.print(builds if v.builds else "builds: none yet")


@app.command("list")
def list_versions(model: str = typer.Option("", "--model", help="Only this model."),
                  stage: str = typer.Option("", "--stage", help="Only this stage."),
                  target: str | None = TARGET, as_json: bool = JSON) -> None:
    """Model versions with stage, gate outcome and test accuracy."""
    target = grpc_target("registry", target)
    stub, channel = _stub(target)
    with channel, rpc_errors("registry", target):
        versions = stub.ListVersions(pb.ListVersionsRequest(model_name=model, stage=_stage(stage) if stage else 0), timeout=10).versions
    if as_json:
        print_json(list(versions))
        return
    table = Table("model", "version", "stage", "aliases", "dataset", "gate", "accuracy", "ok FPR", "run")
    for v in versions:
        table.add_row(v.model_name, v.version, NAMES[v.stage] + (" [yellow](held)[/yellow]" if v.hold_reason else ""),
                      ",".join(v.aliases), f"{v.dataset} {v.dataset_version}",
                      gate_outcome(v.gate),
                      f"{v.gate.candidate.accuracy:.3f}", f"{v.gate.candidate.ok_false_positive_rate:.3f}", v.run_id)
    console.print(table)


@app.command()
def show(model: str, version: str = typer.Argument("production", help="Version number or alias (production, staging, latest)."),
         target: str | None = TARGET, as_json: bool = JSON) -> None:
    """One version: lineage, every gate number, full stage history, its builds per target."""
    target = grpc_target("registry", target)
    stub, channel = _stub(target)
    with channel, rpc_errors("registry", target):
        v = stub.GetVersion(pb.GetVersionRequest(model_name=model, version=version), timeout=10)
    if as_json:
        print_json(v)
    else:
        _show_version(v)


@app.command()
def promote(model: str, version: str, to: str = typer.Option("production", "--to", help="staging, production or archived."),
            reason: str = typer.Option("", "--reason"), actor: str | None = ACTOR,
            target: str | None = TARGET, as_json: bool = JSON) -> None:
    """Move a version to another stage (serving switches before this returns)."""
    target = grpc_target("registry", target)
    stub, channel = _stub(target)
    with channel, rpc_errors("registry", target):
        v = stub.Promote(pb.PromoteRequest(model_name=model, version=version, to_stage=_stage(to),
                                           actor=actor or getpass.getuser(), reason=reason), timeout=300)
    if as_json:
        print_json(v)
    else:
        console.print(f"{v.model_name} v{v.version} is now {NAMES[v.stage]}")


@app.command()
def rollback(model: str, reason: str = typer.Option("", "--reason"), actor: str | None = ACTOR,
             target: str | None = TARGET, as_json: bool = JSON) -> None:
    """Put the previous production version back."""
    target = grpc_target("registry", target)
    stub, channel = _stub(target)
    with channel, rpc_errors("registry", target):
        v = stub.Rollback(pb.RollbackRequest(model_name=model, actor=actor or getpass.getuser(), reason=reason), timeout=300)
    if as_json:
        print_json(v)
    else:
        console.print(f"{v.model_name}: v{v.version} is production again")


@app.command()
def canary(model: str, version: str, share: float = typer.Option(..., "--share", help="Share of traffic, 0..1."),
           reason: str = typer.Option("", "--reason"), actor: str | None = ACTOR,
           target: str | None = TARGET, as_json: bool = JSON) -> None:
    """Make a version the canary, or change the canary's share of traffic."""
    target = grpc_target("registry", target)
    stub, channel = _stub(target)
    with channel, rpc_errors("registry", target):
        v = stub.SetCanary(pb.SetCanaryRequest(model_name=model, version=version, share=share,
                                               actor=actor or getpass.getuser(), reason=reason), timeout=300)
    if as_json:
        print_json(v)
    else:
        console.print(f"{v.model_name} v{v.version}: canary at {v.canary_share:.0%}")
