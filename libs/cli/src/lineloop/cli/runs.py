"""`lineloop runs start|show|list|cancel`: training runs, with live progress."""

from __future__ import annotations

import grpc
import typer
from rich.live import Live
from rich.table import Table

from lineloop.cli.common import console, err_console, grpc_target, print_json, rpc_errors
from lineloop.runtime.client import channel as grpc_channel
from lineloop.v1 import training_pb2 as pb
from lineloop.v1 import training_pb2_grpc

app = typer.Typer(no_args_is_help=True)

TARGET = typer.Option(None, "--target", help="Training gRPC address (default: $LINELOOP_TRAINING_GRPC or 127.0.0.1:50053).")
JSON = typer.Option(False, "--json", help="Print JSON.")
STATE = {pb.RUN_STATE_QUEUED: "queued", pb.RUN_STATE_RUNNING: "[cyan]running[/cyan]",
         pb.RUN_STATE_SUCCEEDED: "[green]succeeded[/green]", pb.RUN_STATE_FAILED: "[red]failed[/red]",
         pb.RUN_STATE_CANCELLED: "[yellow]cancelled[/yellow]"}
FINISHED = (pb.RUN_STATE_SUCCEEDED, pb.RUN_STATE_FAILED, pb.RUN_STATE_CANCELLED)


def _stub(target: str) -> tuple[training_pb2_grpc.TrainingServiceStub, grpc.Channel]:
    channel = grpc_channel(target)
    return training_pb2_grpc.TrainingServiceStub(channel), channel


def _parse_params(values: list[str]) -> dict[str, str]:
    params = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            err_console.print(f"[red]--param {item!r}: expected NAME=VALUE[/red]")
            raise typer.Exit(2)
        params[name] = value
    return params


def _epochs_table(run: pb.Run) -> Table:
    table = Table("epoch", "train loss", "val loss", "val acc", "frames/s", "data share",
                  title=f"{run.run_id} · {run.model_name} · {run.dataset} {run.dataset_version} · {STATE[run.state]}")
    for e in run.epochs:
        table.add_row(str(e.epoch), f"{e.train_loss:.4f}", f"{e.val_loss:.4f}", f"{e.val_accuracy:.3f}",
                      f"{e.frames_per_s:.0f}", f"{e.data_share:.0%}")
    return table


def _summary(run: pb.Run) -> None:
    console.print(_epochs_table(run))
    if run.HasField("test_metrics") and run.test_metrics.samples:
        m = run.test_metrics
        console.print(f"test: accuracy {m.accuracy:.3f} · ok false-positive rate {m.ok_false_positive_rate:.3f} · "
                      f"{m.samples} frames · recall " + " ".join(f"{k}={v:.2f}" for k, v in sorted(m.recall.items())))
    if run.artifact_prefix:
        console.print(f"artifacts: s3://{run.artifact_prefix}")
    if run.error:
        console.print(f"[yellow]{run.error}[/yellow]")


@app.command()
def start(
    dataset: str = typer.Option(..., "--dataset", help="Dataset name (usually the line id)."),
    version: str = typer.Option("", "--version", help="Dataset version; default the newest."),
    model: str = typer.Option("", "--model", help="Model name; default from the dataset."),
    param: list[str] = typer.Option([], "--param", help="Training parameter NAME=VALUE (epochs, lr, batch_size, ...)."),
    follow: bool = typer.Option(True, "--follow/--no-follow", help="Show live progress until the run ends."),
    target: str | None = TARGET,
    as_json: bool = JSON,
) -> None:
    """Queue a training run; follow its epochs (loss, val accuracy, frames/s) live."""
    target = grpc_target("training", target)
    stub, channel = _stub(target)
    with channel, rpc_errors("training", target):
        run = stub.StartRun(pb.StartRunRequest(model_name=model, dataset=dataset, dataset_version=version,
                                               params=_parse_params(param), requested_by="cli"), timeout=30)
        if not follow:
            if as_json:
                print_json(run)
            else:
                console.print(f"queued {run.run_id} ({run.dataset} {run.dataset_version})")
            return
        if as_json:
            for progress in stub.WatchRun(pb.GetRunRequest(run_id=run.run_id)):
                run = progress.run
            print_json(run)
        else:
            with Live(_epochs_table(run), console=console, refresh_per_second=4) as live:
                for progress in stub.WatchRun(pb.GetRunRequest(run_id=run.run_id)):
                    run = progress.run
                    live.update(_epochs_table(run))
            _summary(run)
    if run.state != pb.RUN_STATE_SUCCEEDED:
        raise typer.Exit(1)


@app.command()
def show(run_id: str, target: str | None = TARGET, as_json: bool = JSON) -> None:
    """One run: parameters, epochs, test metrics, artifacts."""
    target = grpc_target("training", target)
    stub, channel = _stub(target)
    with channel, rpc_errors("training", target):
        run = stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=10)
    if as_json:
        print_json(run)
        return
    console.print(f"code {run.code_version} · host {run.host} · reason: {run.reason}")
    console.print("params: " + " ".join(f"{k}={v}" for k, v in sorted(run.params.items())))
    _summary(run)


@app.command("list")
def list_runs(model: str = typer.Option("", "--model", help="Only this model."),
              limit: int = typer.Option(20, "--limit"), target: str | None = TARGET, as_json: bool = JSON) -> None:
    """Recent runs, newest first."""
    target = grpc_target("training", target)
    stub, channel = _stub(target)
    with channel, rpc_errors("training", target):
        runs = stub.ListRuns(pb.ListRunsRequest(model_name=model, limit=limit), timeout=10).runs
    if as_json:
        print_json(list(runs))
        return
    table = Table("run", "model", "dataset", "state", "epochs", "test acc", "ok FPR", "reason")
    for r in runs:
        done = r.HasField("test_metrics") and r.test_metrics.samples
        table.add_row(r.run_id, r.model_name, f"{r.dataset} {r.dataset_version}", STATE[r.state], str(len(r.epochs)),
                      f"{r.test_metrics.accuracy:.3f}" if done else "-",
                      f"{r.test_metrics.ok_false_positive_rate:.3f}" if done else "-", r.error or r.reason)
    console.print(table)


@app.command()
def cancel(run_id: str, reason: str = typer.Option("", "--reason"), target: str | None = TARGET,
           as_json: bool = JSON) -> None:
    """Cancel a queued or running run (nothing is registered from it)."""
    target = grpc_target("training", target)
    stub, channel = _stub(target)
    with channel, rpc_errors("training", target):
        run = stub.CancelRun(pb.CancelRunRequest(run_id=run_id, reason=reason), timeout=30)
    if as_json:
        print_json(run)
    else:
        console.print(f"{run.run_id}: {STATE[run.state]} {run.error}")
