"""`lineloop health show|drift|watch`: what the monitor knows about a line, and its alerts."""

from __future__ import annotations

import grpc
import typer
from rich.markup import escape
from rich.table import Table

from lineloop.cli.common import console, grpc_target, print_json, rpc_errors
from lineloop.runtime.client import channel as grpc_channel
from lineloop.v1 import events_pb2, monitor_pb2, monitor_pb2_grpc

app = typer.Typer(no_args_is_help=True)

LINE = typer.Option(..., "--line", help="Production line id.")
TARGET = typer.Option(None, "--target", help="Monitor gRPC address (default: $LINELOOP_MONITOR_GRPC or 127.0.0.1:50056).")
JSON = typer.Option(False, "--json", help="Print JSON.")


def _stub(target: str) -> tuple[monitor_pb2_grpc.MonitorServiceStub, grpc.Channel]:
    channel = grpc_channel(target)
    return monitor_pb2_grpc.MonitorServiceStub(channel), channel


@app.command()
def show(line: str = LINE, target: str | None = TARGET, as_json: bool = JSON) -> None:
    """Active alerts, frames, rejections, scoring, live accuracy and class mix per model version."""
    target = grpc_target("monitor", target)
    stub, channel = _stub(target)
    with channel, rpc_errors("monitor", target):
        health = stub.GetModelHealth(monitor_pb2.GetModelHealthRequest(line_id=line), timeout=10)
    if as_json:
        print_json(health)
        return
    state = "[red]DRIFTING[/red]" if health.drift_active else "[green]stable[/green]"
    console.print(f"line [bold]{health.line_id}[/bold] · model {health.model_name} · {state}")
    if health.active_alerts:
        console.print(f"[red]{len(health.active_alerts)} active alert(s)[/red]:")
        for alert in health.active_alerts:
            console.print("  " + describe_alert(alert))
    else:
        console.print("no active alerts")
    console.print(f"frames ingested {health.frames_ingested} · rejected {health.frames_rejected} "
                  + " ".join(f"{k}={v}" for k, v in sorted(health.reject_reasons.items())))
    console.print(_scoring(health.scoring))
    table = Table("version", "scored", "labelled", "live accuracy", "mean confidence", "class mix")
    for v in health.versions:
        accuracy = f"{v.live_accuracy:.3f}" if v.frames_labelled else "-"
        mix = " ".join(f"{k}:{share:.0%}" for k, share in sorted(v.class_mix.items()))
        table.add_row(v.model_version, str(v.frames_scored), str(v.frames_labelled), accuracy, f"{v.mean_confidence:.3f}", mix)
    console.print(table)


@app.command()
def drift(line: str = LINE, target: str | None = TARGET, as_json: bool = JSON) -> None:
    """Drift score of each quality statistic, current window against the reference."""
    target = grpc_target("monitor", target)
    stub, channel = _stub(target)
    with channel, rpc_errors("monitor", target):
        report = stub.GetDriftReport(monitor_pb2.GetDriftReportRequest(line_id=line), timeout=10)
    if as_json:
        print_json(report)
        return
    if not report.features:
        console.print(f"line {line}: not enough frames yet for a reference and a current window")
    table = Table("feature", "PSI", "threshold", "reference mean", "current mean", "drifted")
    for f in report.features:
        table.add_row(f.feature, f"{f.score:.3f}", f"{f.threshold:.2f}", f"{f.reference_mean:.2f}",
                      f"{f.current_mean:.2f}", "[red]yes[/red]" if f.drifted else "no")
    console.print(table)
    for event in report.recent:
        console.print(_describe(event))


@app.command()
def watch(line: str = typer.Option("", "--line", help="Only this line."), target: str | None = TARGET) -> None:
    """Print alerts as they are raised and cleared (Ctrl-C to stop)."""
    target = grpc_target("monitor", target)
    stub, channel = _stub(target)
    console.print(f"watching alerts{' for ' + line if line else ''} at {target} ...")
    with channel, rpc_errors("monitor", target):
        try:
            for alert in stub.WatchAlerts(monitor_pb2.WatchAlertsRequest(line_id=line)):
                console.print(describe_alert(alert), soft_wrap=True)
        except KeyboardInterrupt:
            pass


def _scoring(scoring: monitor_pb2.ScoringHealth) -> str:
    share = f"{scoring.unscored_share:.0%} of the newest {scoring.window_frames} frames unscored"
    if scoring.outage:
        since = scoring.outage_since.ToDatetime().isoformat(timespec="seconds")
        state = f"[red]SCORING OUTAGE[/red] since {since}: {share} (threshold {scoring.threshold:.0%})"
    else:
        state = f"scoring ok: {share}"
    text = (f"{state} · {scoring.frames_unscored} frames ingested without a prediction in all: "
            "not in prediction statistics, not re-scored")
    if scoring.last_missing_reason:
        text += f"\n  last reason: {escape(scoring.last_missing_reason)}"
    return text


def _describe(event: events_pb2.DriftDetected) -> str:
    kind = events_pb2.DriftKind.Name(event.kind).removeprefix("DRIFT_KIND_").lower()
    when = event.detected_at.ToDatetime().isoformat(timespec="seconds")
    return (f"{when} [red]{kind} drift[/red] on {event.line_id} ({event.model_name} v{event.model_version}): "
            f"{event.feature} {event.score:.3f} > {event.threshold:.3f}")


def describe_alert(alert: events_pb2.Alert) -> str:
    """One line: when, raised or cleared, what, where, the score against its levels, why."""
    kind = events_pb2.AlertKind.Name(alert.kind).removeprefix("ALERT_KIND_").lower().replace("_", " ")
    when = alert.changed_at.ToDatetime().isoformat(timespec="seconds")
    where = f"line {alert.line_id}" + (f" camera {alert.camera_id}" if alert.camera_id else "")
    if alert.state == events_pb2.ALERT_STATE_CLEARED:
        head = f"[green]CLEARED[/green] {kind} on {where} (raised {alert.raised_at.ToDatetime().isoformat(timespec='seconds')})"
        levels = f"{alert.feature} {alert.score:.3f} < {alert.clear_below:.3f}"
    else:
        head = f"[red]RAISED[/red] {kind} on {where}"
        levels = f"{alert.feature} {alert.score:.3f} > {alert.threshold:.3f}"
    return f"{when} {head}: {levels} · {escape(alert.detail)} [dim](alert {alert.alert_id})[/dim]"
