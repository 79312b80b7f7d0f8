"""`lineloop reconcile`: orphan objects and references to missing objects, reported, and with
`--delete` orphans past the grace period removed.

Frames bucket vs ingest's frame index (orphans deleted with `--delete`); dataset versions vs
the datasets and frames buckets (report only). It reads the services' databases and the
object store directly (`LINELOOP_INGEST_DATABASE_URL`, `LINELOOP_LABELING_DATABASE_URL`,
else the SQLite files under `LINELOOP_STATE_DIR`; `LINELOOP_S3_*`).
"""

from __future__ import annotations

import json

import typer
from rich.markup import escape

from lineloop.cli.common import console, err_console


def register(root: typer.Typer) -> None:
    @root.command("reconcile")
    def reconcile(
        delete: bool = typer.Option(False, "--delete", help="Delete the orphans older than the grace period."),
        grace_s: float | None = typer.Option(
            None, "--grace-s", min=0,
            help="Orphans younger than this are left alone (uploads in flight). "
                 "Default: LINELOOP_INGEST_RECONCILE_GRACE_S, else 86400.",
        ),
        as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Find objects nothing references and references to missing objects; exit 1 while any remain."""
        # Imported here: the other commands need not load the services.
        from lineloop.ingest.reconcile import BacklogUnknown, NoIngestDatabase
        from lineloop.ingest.reconcile import reconcile as reconcile_frames
        from lineloop.labeling.reconcile import NoLabelingDatabase, find_dataset_inconsistencies
        from lineloop.storage.objects import ObjectStoreError

        try:
            frames = reconcile_frames(grace_s=grace_s, delete=delete)
            try:
                datasets, skipped = find_dataset_inconsistencies(), ""
            except NoLabelingDatabase as exc:
                datasets, skipped = None, str(exc)
        except NoIngestDatabase as exc:
            err_console.print(f"[red]cannot reconcile:[/red] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(2) from None
        except ObjectStoreError as exc:
            err_console.print(f"[red]object store failed:[/red] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(3) from None
        except BacklogUnknown as exc:
            err_console.print(f"[red]nothing deleted:[/red] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(3) from None
        consistent = frames.consistent and (datasets is None or datasets.consistent)
        if as_json:
            typer.echo(json.dumps({
                "frames": frames.as_dict(),
                "datasets": datasets.as_dict() if datasets is not None else {"skipped": skipped},
                "consistent": consistent,
            }, indent=2))
        else:
            _print_frames(frames)
            if datasets is None:
                console.print(f"datasets: not checked: {escape(skipped)}", soft_wrap=True)
            else:
                _print_datasets(datasets)
        if not consistent:
            raise typer.Exit(1)


def _print_frames(report) -> None:
    console.print(f"{report.bucket}: {report.objects} objects, {report.references} referenced by the frame index")
    if report.backlog_since is not None:
        console.print(f"  ingest has frames queued since {report.backlog_since.isoformat()}: ages judged from then")
    for orphan in report.orphans:
        done = "deleted" if orphan.key in report.deleted else "orphan"
        console.print(f"  {done}: {escape(orphan.key)} ({orphan.size_bytes} bytes, {orphan.age_s:.0f} s old)",
                      soft_wrap=True)
    for missing in report.missing:
        console.print(f"  missing: {escape(missing.bucket)}/{escape(missing.key)} "
                      f"(frames {escape(', '.join(missing.frame_ids))})", soft_wrap=True)
    deleted = set(report.deleted)
    console.print(
        f"{len(report.orphans)} orphans older than {report.grace_s:g} s "
        f"({sum(o.key in deleted for o in report.orphans)} deleted), "
        f"{len(report.in_grace)} unreferenced within the grace period (left alone), "
        f"{len(report.staged)} gateway uploads already ingested ({sum(o.key in deleted for o in report.staged)} deleted), "
        f"{len(report.missing)} references to missing objects"
    )


def _print_datasets(report) -> None:
    console.print(f"{report.bucket}: {report.versions} dataset versions, {report.entries} manifest entries")
    for broken in report.broken_manifests:
        console.print(f"  manifest {escape(broken.problem)}: {escape(broken.dataset)} {broken.version} "
                      f"({escape(broken.key)})", soft_wrap=True)
    for missing in report.missing_frames:
        console.print(f"  missing frame: {escape(missing.dataset)} {missing.version} {escape(missing.frame_id)} "
                      f"({escape(missing.bucket)}/{escape(missing.key)})", soft_wrap=True)
    console.print(f"{len(report.broken_manifests)} broken manifests, {len(report.missing_frames)} missing frames, "
                  f"{len(report.unowned)} objects no version owns (left alone)")
