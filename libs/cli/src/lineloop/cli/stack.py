"""`lineloop stack up|down|status` and the top-level `up`, `down`."""

from __future__ import annotations

import json
import time

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lineloop.stack.config import StackConfig
from lineloop.stack.embedded import EmbeddedStack, StackError
from lineloop.stack.servers import MissingBinary
from lineloop.stack.services import ServiceFleet

app = typer.Typer(no_args_is_help=True)
console = Console()
errors = Console(stderr=True)


def _stack() -> EmbeddedStack:
    return EmbeddedStack(StackConfig.from_env())


def _start_stack(embedded: EmbeddedStack) -> float:
    started = time.monotonic()
    with console.status("starting the embedded stack…") as status:

        def report(line: str) -> None:
            status.update(line)
            if "ready in" in line or "already running" in line:
                console.print(f"[green]✓[/green] {line}")

        try:
            timings = embedded.up(report)
        except (StackError, MissingBinary) as err:
            # Unwrapped and unstyled: it names pids and commands to copy.
            errors.print(f"[red]stack failed to start:[/red] {escape(str(err))}", soft_wrap=True)
            raise typer.Exit(1) from err
    total = time.monotonic() - started
    if timings:
        console.print(f"stack ready in {total:.2f} s (state {embedded.state_dir})")
    return total


def _print_addresses(embedded: EmbeddedStack) -> None:
    for key, value in embedded.env().items():
        console.print(f"  {key}={value}")


@app.command("up")
def stack_up() -> None:
    """Start the S3 store, the Kafka-API broker and Triton (nothing that is already up)."""
    embedded = _stack()
    _start_stack(embedded)
    _print_addresses(embedded)


@app.command("down")
def stack_down() -> None:
    """Stop the stack this state directory started."""
    embedded = _stack()
    with console.status("stopping the embedded stack…") as status:
        stopped = embedded.down(status.update)
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@app.command("status")
def stack_status(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Which servers run, answer, and where."""
    embedded = _stack()
    rows = [s.as_dict() for s in embedded.status()]
    services = ServiceFleet(embedded.config).status()
    if as_json:
        typer.echo(json.dumps({"state_dir": str(embedded.state_dir), "servers": rows, "services": services}, indent=2))
        return
    table = Table(title=f"lineloop stack ({embedded.state_dir})")
    for column in ("name", "state", "pid", "ports", "log"):
        table.add_column(column)
    for row in rows:
        state = "[green]healthy[/green]" if row["healthy"] else ("[yellow]running[/yellow]" if row["running"] else "[red]down[/red]")
        # SeaweedFS's internal ports are in --json; the table keeps to what clients use.
        ports = ", ".join(f"{k} {v}" for k, v in row["addresses"].items() if not k.startswith("weed "))
        table.add_row(row["name"], state, str(row["pid"] or "-"), ports, row["log"])
    for row in services:
        if not row["running"]:
            continue
        state = "[green]serving[/green]" if row["serving"] else "[yellow]running[/yellow]"
        table.add_row(row["name"], state, str(row["pid"]), row["grpc"], row["log"])
    console.print(table)


def register_top_level(root: typer.Typer) -> None:
    """Commands that sit at the top level of `lineloop`."""

    @root.command("up")
    def up() -> None:
        """The stack plus the six services, each waited for until its gRPC health is SERVING."""
        embedded = _stack()
        _start_stack(embedded)
        fleet = ServiceFleet(embedded.config)
        with console.status("starting services…") as status:
            results = fleet.up(report=status.update)
        failed = False
        for result in results:
            if result.state == "started":
                console.print(f"[green]✓[/green] {result.name}: SERVING on {result.detail} in {result.seconds:.2f} s")
            elif result.state == "running":
                console.print(f"[green]✓[/green] {result.name}: already running")
            else:
                failed = failed or result.state == "failed"
                colour = "red" if result.state == "failed" else "yellow"
                console.print(f"[{colour}]✗[/{colour}] {result.name}: {result.state}: {escape(result.detail)}", soft_wrap=True)
        if failed:
            raise typer.Exit(1)

    @root.command("down")
    def down() -> None:
        """Stop the services, then the stack; leaves no process behind."""
        embedded = _stack()
        with console.status("stopping…") as status:
            services = ServiceFleet(embedded.config).down(status.update)
            stopped = [r.name for r in services if r.state == "stopped"] + embedded.down(status.update)
        console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
