"""`lineloop reconcile`: orphan objects and references to missing objects (frames bucket vs
ingest's frame index), reported, and with `--delete` orphans past the grace period removed.

It reads ingest's database and the object store directly (`LINELOOP_INGEST_DATABASE_URL`,
else the SQLite file under `LINELOOP_STATE_DIR`; `LINELOOP_S3_*`).
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
        # Imported here: the other commands need not load ingest.
        from lineloop.ingest.reconcile import reconcile as run_reconcile
        from lineloop.storage.objects import ObjectStoreError

        try:
            report = run_reconcile(grace_s=grace_s, delete=delete)
        except ObjectStoreError as exc:
            err_console.print(f"[red]object store failed:[/red] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(3) from None
        if as_json:
            typer.echo(json.dumps(report.as_dict(), indent=2))
        else:
            console.print(f"{report.bucket}: {report.objects} objects, {report.references} referenced by the frame index")
            for orphan in report.orphans:
                done = "deleted" if orphan.key in report.deleted else "orphan"
                console.print(f"  {done}: {escape(orphan.key)} ({orphan.size_bytes} bytes, {orphan.age_s:.0f} s old)",
                              soft_wrap=True)
            for missing in report.missing:
                console.print(f"  missing: {escape(missing.bucket)}/{escape(missing.key)} "
                              f"(frames {escape(', '.join(missing.frame_ids))})", soft_wrap=True)
            console.print(
                f"{len(report.orphans)} orphans older than {report.grace_s:g} s ({len(report.deleted)} deleted), "
                f"{len(report.in_grace)} unreferenced within the grace period (left alone), "
                f"{len(report.missing)} references to missing objects"
            )
        if not report.consistent:
            raise typer.Exit(1)
