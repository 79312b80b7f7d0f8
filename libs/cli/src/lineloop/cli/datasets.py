"""`lineloop datasets cut|list|show|diff`: immutable dataset versions of the labeling service."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from lineloop.cli.common import console, err_console, print_json
from lineloop.cli.labels import JsonOption, TargetOption, labeling, object_store
from lineloop.storage.objects import ObjectStoreError, Sha256Mismatch
from lineloop.v1 import labeling_pb2 as pb
from lineloop.v1.events_pb2 import DatasetVersioned, SuspectFate

app = typer.Typer(no_args_is_help=True)


def _summary(v: DatasetVersioned) -> dict:
    return {
        "dataset": v.dataset, "version": v.version, "parent_version": v.parent_version, "line_id": v.line_id,
        "frames": sum(v.split_counts.values()), "class_counts": dict(sorted(v.class_counts.items())),
        "split_counts": dict(sorted(v.split_counts.items())), "classes": list(v.classes),
        "manifest": f"s3://{v.manifest.bucket}/{v.manifest.key}", "manifest_sha256": v.manifest.sha256,
        "created_by": v.created_by, "reason": v.reason, "created_at": v.created_at.ToJsonString(),
        "label_check": _label_check(v),
    }


def _label_check(v: DatasetVersioned) -> dict:
    c = v.label_check
    return {
        "checked": c.checked, "not_checked": c.not_checked, "method": c.method,
        "frames_checked": c.frames_checked, "frames_unchecked": c.frames_unchecked,
        "suspects": [{
            "frame_id": x.frame_id, "label": x.label_class, "annotator": x.annotator, "suggested": x.suggested_class,
            "score": round(x.score, 4), "fate": FATES.get(x.fate, "unknown"), "reviewed_by": x.reviewed_by,
            "final_label": x.final_class, "flagged_in": x.flagged_in,
        } for x in c.suspects],
    }


FATES = {
    SuspectFate.SUSPECT_FATE_PENDING: "pending",      # no second review: kept out of the test split
    SuspectFate.SUSPECT_FATE_CONFIRMED: "confirmed",
    SuspectFate.SUSPECT_FATE_CORRECTED: "corrected",
}


def _show_label_check(v: DatasetVersioned) -> None:
    c = v.label_check
    if not c.checked:
        # Versions cut before the check existed carry no label_check at all.
        console.print(f"  labels    not checked: {c.not_checked or 'no label check recorded'}")
        return
    fates = [FATES.get(x.fate, "unknown") for x in c.suspects]
    console.print(f"  labels    {c.frames_checked} checked, {c.frames_unchecked} without an out-of-sample prediction; "
                  f"{len(c.suspects)} suspects listed ({fates.count('confirmed')} confirmed, "
                  f"{fates.count('corrected')} corrected, {fates.count('pending')} pending)")
    console.print(f"            {c.method}")
    if not c.suspects:
        return
    table = Table(title="suspected label errors (pending ones stay out of the test split)")
    for column in ("frame", "label", "by", "model favours", "score", "fate", "reviewed by", "final"):
        table.add_column(column)
    for x in c.suspects:
        table.add_row(x.frame_id, x.label_class, x.annotator, x.suggested_class, f"{x.score:.3f}",
                      FATES.get(x.fate, "unknown"), x.reviewed_by or "-", x.final_class or "-")
    console.print(table)


def _show(v: DatasetVersioned) -> None:
    s = _summary(v)
    console.print(f"[bold]{v.dataset} {v.version}[/bold]  (parent {v.parent_version or '-'}, line {v.line_id or 'all'})")
    console.print(f"  manifest  {s['manifest']}")
    console.print(f"  sha256    {v.manifest.sha256}")
    console.print(f"  created   {s['created_at']} by {v.created_by}: {v.reason}")
    _show_label_check(v)
    table = Table(title=f"{s['frames']} frames")
    table.add_column("class")
    splits = ["train", "val", "test"]
    for split in splits:
        table.add_column(split, justify="right")
    table.add_column("total", justify="right")
    # The event carries per-class and per-split totals; the class x split table needs the manifest.
    by = _class_split(_manifest(v))
    for cls in list(v.classes) + sorted(set(v.class_counts) - set(v.classes)):
        table.add_row(cls, *[str(by.get((cls, sp), 0)) for sp in splits], str(v.class_counts.get(cls, 0)))
    table.add_row("[bold]total[/bold]", *[str(v.split_counts.get(sp, 0)) for sp in splits], str(s["frames"]))
    console.print(table)


def _manifest(v: DatasetVersioned) -> list[dict]:
    """The version's manifest from S3, checked against its recorded sha256."""
    where = f"s3://{v.manifest.bucket}/{v.manifest.key}"
    try:
        data = object_store().get_bytes(v.manifest.bucket, v.manifest.key, expected_sha256=v.manifest.sha256)
    except Sha256Mismatch as err:
        err_console.print(f"[red]manifest of {v.dataset} {v.version} is corrupt[/red]: {err}")
        raise typer.Exit(1) from None
    except ObjectStoreError as err:
        err_console.print(f"[red]cannot read manifest {where}[/red]: {err}")
        raise typer.Exit(1) from None
    return [json.loads(line) for line in data.splitlines() if line]


def _class_split(rows: list[dict]) -> dict[tuple[str, str], int]:
    by: dict[tuple[str, str], int] = {}
    for row in rows:
        by[(row["label"], row["split"])] = by.get((row["label"], row["split"]), 0) + 1
    return by


@app.command("cut")
def cut(
    line: str = typer.Option("", "--line", help="Frames of this line (default: all lines)."),
    dataset: str = typer.Option("", "--dataset", help="Dataset name (default: the line id)."),
    reason: str = typer.Option("", "--reason"),
    requested_by: str = typer.Option("cli", "--requested-by"),
    target: str | None = TargetOption,
    as_json: bool = JsonOption,
) -> None:
    """Cut a new version now (returns the newest one unchanged when no label changed)."""
    if not (line or dataset):
        err_console.print("[red]give --line or --dataset[/red]")
        raise typer.Exit(2)
    with labeling(target) as stub:
        v = stub.CutDataset(pb.CutDatasetRequest(dataset=dataset, line_id=line, requested_by=requested_by, reason=reason))
    if as_json:
        print_json(_summary(v))
        return
    _show(v)


@app.command("list")
def list_datasets(
    dataset: str = typer.Option("", "--dataset", help="Only this dataset."),
    target: str | None = TargetOption,
    as_json: bool = JsonOption,
) -> None:
    """Every dataset version, oldest first."""
    with labeling(target) as stub:
        versions = stub.ListDatasets(pb.ListDatasetsRequest(dataset=dataset)).versions
    if as_json:
        print_json([_summary(v) for v in versions])
        return
    table = Table(title="dataset versions")
    for column in ("dataset", "version", "parent", "frames", "train/val/test", "created", "by", "reason"):
        table.add_column(column)
    for v in versions:
        splits = "/".join(str(v.split_counts.get(s, 0)) for s in ("train", "val", "test"))
        table.add_row(v.dataset, v.version, v.parent_version or "-", str(sum(v.split_counts.values())), splits,
                      v.created_at.ToJsonString(), v.created_by, v.reason)
    console.print(table)


@app.command("show")
def show(
    dataset: str = typer.Argument(...),
    version: str = typer.Argument("", help="Default: the newest."),
    target: str | None = TargetOption,
    as_json: bool = JsonOption,
) -> None:
    """Counts per class and split of one version, and the labels its check flagged with their fate."""
    with labeling(target) as stub:
        v = stub.GetDataset(pb.GetDatasetRequest(dataset=dataset, version=version))
    if as_json:
        summary = _summary(v)
        summary["class_split_counts"] = {f"{c}/{s}": n for (c, s), n in sorted(_class_split(_manifest(v)).items())}
        print_json(summary)
        return
    _show(v)


def diff_manifests(old: list[dict], new: list[dict]) -> dict:
    before = {r["frame_id"]: r for r in old}
    after = {r["frame_id"]: r for r in new}
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    common = sorted(set(before) & set(after))
    relabelled = [
        {"frame_id": f, "from": before[f]["label"], "to": after[f]["label"],
         "source": f"{before[f]['label_source']}->{after[f]['label_source']}"}
        for f in common if before[f]["label"] != after[f]["label"]
    ]
    moved = [{"frame_id": f, "from": before[f]["split"], "to": after[f]["split"]}
             for f in common if before[f]["split"] != after[f]["split"]]
    classes = sorted({r["label"] for r in old} | {r["label"] for r in new})
    count = lambda rows, c: sum(1 for r in rows if r["label"] == c)  # noqa: E731
    return {
        "added": added, "removed": removed, "relabelled": relabelled, "moved_split": moved,
        "class_delta": {c: count(new, c) - count(old, c) for c in classes},
    }


@app.command("diff")
def diff(
    dataset: str = typer.Argument(...),
    old_version: str = typer.Argument(...),
    new_version: str = typer.Argument("", help="Default: the newest."),
    target: str | None = TargetOption,
    as_json: bool = JsonOption,
) -> None:
    """What changed between two versions: frames added/removed, relabelled, class counts."""
    with labeling(target) as stub:
        old = stub.GetDataset(pb.GetDatasetRequest(dataset=dataset, version=old_version))
        new = stub.GetDataset(pb.GetDatasetRequest(dataset=dataset, version=new_version))
    result = {"dataset": dataset, "from": old.version, "to": new.version,
              **diff_manifests(_manifest(old), _manifest(new))}
    if as_json:
        print_json(result)
        return
    console.print(f"[bold]{dataset}[/bold] {old.version} -> {new.version}")
    console.print(f"  +{len(result['added'])} frames, -{len(result['removed'])} frames, "
                  f"{len(result['relabelled'])} relabelled, {len(result['moved_split'])} moved between splits")
    table = Table(title="class counts")
    for column in ("class", old.version, new.version, "change"):
        table.add_column(column, justify="right")
    for cls, delta in result["class_delta"].items():
        table.add_row(cls, str(old.class_counts.get(cls, 0)), str(new.class_counts.get(cls, 0)), f"{delta:+d}")
    console.print(table)
    for item in result["relabelled"][:20]:
        console.print(f"  relabelled {item['frame_id']}: {item['from']} -> {item['to']} ({item['source']})")
    if len(result["relabelled"]) > 20:
        console.print(f"  … {len(result['relabelled']) - 20} more (--json for all)")
