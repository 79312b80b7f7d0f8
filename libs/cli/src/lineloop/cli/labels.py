"""`lineloop labels next|submit|history|export-labelstudio|import-labelstudio|simulate-qa`.

Talks to the labeling service over gRPC (`--target`, default `LINELOOP_LABELING_GRPC`
or 127.0.0.1:50052); `simulate-qa` also reads the gateway simulator's ground truth
(`lineloop-sim/truth/<frame_id>.json`) from the S3 store named by `LINELOOP_S3_*`.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lineloop.cli.common import console, err_console, grpc_target, print_json, rpc_errors
from lineloop.contracts.catalogue import bucket
from lineloop.runtime import StackSettings
from lineloop.runtime.client import channel as grpc_channel
from lineloop.storage.objects import ObjectNotFound, ObjectStore, ObjectStoreError
from lineloop.v1 import labeling_pb2 as pb
from lineloop.v1.events_pb2 import LabelSource
from lineloop.v1.labeling_pb2_grpc import LabelingServiceStub

app = typer.Typer(no_args_is_help=True)

SIM_BUCKET = bucket("sim")
DEFAULT_CLASSES = "ok,bruise,rot,scab"
TargetOption = typer.Option(None, "--target", help="Labeling gRPC address (default: LINELOOP_LABELING_GRPC or 127.0.0.1:50052).")
JsonOption = typer.Option(False, "--json", help="Machine-readable output.")


@contextmanager
def labeling(target: str | None) -> Iterator[LabelingServiceStub]:
    """A stub on a fresh channel; a gRPC failure becomes one clear line and a non-zero exit."""
    address = grpc_target("labeling", target)
    with grpc_channel(address) as channel, rpc_errors("labeling", address):
        yield LabelingServiceStub(channel)


@app.command("next")
def next_tasks(
    annotator: str = typer.Option(..., "--annotator", "-a", help="Who will label these frames."),
    line: str = typer.Option("", "--line", help="Only this line (default: any)."),
    max_tasks: int = typer.Option(10, "--max", min=1, help="How many tasks to lease."),
    target: str | None = TargetOption,
    as_json: bool = JsonOption,
) -> None:
    """Lease the most valuable frames to label; nobody else gets them until the lease expires."""
    with labeling(target) as stub:
        reply = stub.NextTasks(pb.NextTasksRequest(annotator=annotator, line_id=line, max_tasks=max_tasks))
    if as_json:
        print_json(list(reply.tasks))
        return
    if not reply.tasks:
        console.print("the review queue is empty")
        return
    table = Table(title=f"{len(reply.tasks)} tasks for {annotator}")
    for column in ("frame", "line", "camera", "predicted", "priority", "why", "lease", "expires"):
        table.add_column(column)
    for t in reply.tasks:
        table.add_row(
            t.frame_id, t.line_id, t.camera_id, t.prediction.predicted_class or "-", f"{t.priority:.3f}", t.why,
            t.lease_id, t.lease_expires_at.ToJsonString(),
        )
    console.print(table)


@app.command("submit")
def submit(
    frame_id: str = typer.Argument(..., help="The frame to label."),
    label_class: str = typer.Argument(..., help="Its class, e.g. ok, bruise, rot, scab."),
    annotator: str = typer.Option(..., "--annotator", "-a"),
    lease: str = typer.Option("", "--lease", help="The lease from `labels next` (empty: a correction)."),
    note: str = typer.Option("", "--note"),
    target: str | None = TargetOption,
    as_json: bool = JsonOption,
) -> None:
    """Record a human label (the latest human label of a frame wins)."""
    with labeling(target) as stub:
        reply = stub.SubmitLabel(pb.SubmitLabelRequest(
            lease_id=lease, frame_id=frame_id, label_class=label_class, annotator=annotator, note=note,
        ))
    if as_json:
        print_json(reply)
        return
    what = "already recorded" if reply.duplicate else "recorded"
    console.print(f"label {reply.label.label_id} {what}: {frame_id} = {reply.label.label_class}")


@app.command("history")
def history(frame_id: str = typer.Argument(...), target: str | None = TargetOption, as_json: bool = JsonOption) -> None:
    """Every label a frame got, oldest first, and the one that counts."""
    with labeling(target) as stub:
        reply = stub.GetFrameLabels(pb.GetFrameLabelsRequest(frame_id=frame_id))
    if as_json:
        print_json(reply)
        return
    table = Table(title=f"labels of {frame_id}")
    for column in ("created", "class", "source", "annotator", "note", "label id"):
        table.add_column(column)
    for label in reply.history:
        effective = label.label_id == reply.effective.label_id
        table.add_row(
            label.created_at.ToJsonString(), f"[bold]{label.label_class}[/bold]" if effective else label.label_class,
            LabelSource.Name(label.source).removeprefix("LABEL_SOURCE_").lower(), label.annotator, label.note,
            label.label_id,
        )
    console.print(table)
    console.print(f"effective: {reply.effective.label_class or '(unlabelled)'}")


@app.command("export-labelstudio")
def export_labelstudio(
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the Label Studio tasks JSON."),
    line: str = typer.Option("", "--line"),
    max_tasks: int = typer.Option(0, "--max", min=0, help="0: all."),
    only_unlabelled: bool = typer.Option(False, "--only-unlabelled"),
    target: str | None = TargetOption,
) -> None:
    """Tasks in Label Studio's import format (presigned image URLs, predictions as pre-annotations)."""
    with labeling(target) as stub:
        reply = stub.ExportLabelStudio(pb.ExportLabelStudioRequest(
            line_id=line, max_tasks=max_tasks, only_unlabelled=only_unlabelled,
        ))
    output.write_bytes(reply.tasks_json)
    console.print(f"{reply.count} tasks written to {output}")
    console.print('Label Studio config: <Choices name="label" toName="image"> over <Image name="image" value="$image"/>')


@app.command("import-labelstudio")
def import_labelstudio(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="A Label Studio JSON export."),
    target: str | None = TargetOption,
    as_json: bool = JsonOption,
) -> None:
    """Label Studio annotations back as human labels; the whole file or nothing."""
    with labeling(target) as stub:
        reply = stub.ImportLabelStudio(pb.ImportLabelStudioRequest(export_json=path.read_bytes()))
    if as_json:
        print_json({"imported": reply.imported, "skipped": reply.skipped})
        return
    console.print(f"imported {reply.imported} labels, skipped {reply.skipped} (already known, empty or cancelled)")


def object_store() -> ObjectStore:
    """The S3 store named by `LINELOOP_S3_*` (the embedded stack's by default)."""
    stack = StackSettings()
    return stack.object_store()


def _truth(objects: ObjectStore, frame_id: str) -> str | None:
    key = f"truth/{frame_id}.json"
    try:
        return json.loads(objects.get_bytes(SIM_BUCKET, key))["label"]
    except ObjectNotFound:
        return None
    except ObjectStoreError as err:
        err_console.print(f"[red]cannot read ground truth s3://{SIM_BUCKET}/{key}[/red]: {err}")
        raise typer.Exit(1) from None


@app.command("simulate-qa")
def simulate_qa(
    line: str = typer.Option("", "--line"),
    max_labels: int = typer.Option(0, "--max", min=0, help="Stop after this many labels (0: until the queue is empty)."),
    error_rate: float = typer.Option(0.0, "--error-rate", min=0.0, max=1.0, help="Share of deliberately wrong labels."),
    rate: float = typer.Option(0.0, "--rate", min=0.0, help="Labels per second (0: as fast as possible)."),
    annotator: str = typer.Option("sim-qa", "--annotator"),
    batch: int = typer.Option(16, "--batch", min=1),
    classes: str = typer.Option(DEFAULT_CLASSES, "--classes", help="Classes a wrong answer is drawn from."),
    follow: bool = typer.Option(False, "--follow", help="Keep waiting for new frames instead of stopping when empty."),
    seed: int | None = typer.Option(None, "--seed"),
    target: str | None = TargetOption,
    as_json: bool = JsonOption,
) -> None:
    """A simulated QA operator: answers tasks with the gateway simulator's true classes."""
    rng = random.Random(seed)
    class_list = [c for c in classes.split(",") if c]
    objects = object_store()
    counts = {"submitted": 0, "wrong_on_purpose": 0, "no_truth": 0, "refused": 0}
    refusals: dict[str, int] = {}
    with labeling(target) as stub, Progress(
        TextColumn("simulated QA"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err_console, disable=as_json,
    ) as progress:
        bar = progress.add_task("labels", total=max_labels or None)
        while not max_labels or counts["submitted"] < max_labels:
            wanted = min(batch, max_labels - counts["submitted"]) if max_labels else batch
            tasks = stub.NextTasks(pb.NextTasksRequest(annotator=annotator, line_id=line, max_tasks=wanted)).tasks
            if not tasks:
                if not follow:
                    break
                time.sleep(1.0)
                continue
            for task in tasks:
                truth = _truth(objects, task.frame_id)
                if truth is None:
                    counts["no_truth"] += 1  # not a simulated frame: its lease simply expires
                    continue
                answer = truth
                if rng.random() < error_rate:
                    answer = rng.choice([c for c in class_list if c != truth] or [truth])
                    counts["wrong_on_purpose"] += answer != truth
                try:
                    stub.SubmitLabel(pb.SubmitLabelRequest(
                        lease_id=task.lease_id, frame_id=task.frame_id, label_class=answer, annotator=annotator,
                        note="simulated QA",
                    ))
                except grpc.RpcError as err:
                    if err.code() == grpc.StatusCode.UNAVAILABLE:
                        raise
                    counts["refused"] += 1
                    refusals[err.details()] = refusals.get(err.details(), 0) + 1
                    continue
                counts["submitted"] += 1
                progress.advance(bar)
                if rate:
                    time.sleep(1.0 / rate)
    if as_json:
        print_json({**counts, "refusals": refusals})
        return
    console.print(
        f"simulated QA: {counts['submitted']} labels ({counts['wrong_on_purpose']} wrong on purpose), "
        f"{counts['no_truth']} frames without ground truth, {counts['refused']} refused"
    )
    for detail, n in refusals.items():
        console.print(f"  refused ×{n}: {detail}")
