"""`lineloop stack up|down|status` and the top-level `up`, `down`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lineloop.contracts.access import ROLES
from lineloop.runtime.pki import LocalIssuer
from lineloop.stack.config import StackConfig
from lineloop.stack.embedded import EmbeddedStack, StackError
from lineloop.stack.servers import MissingBinary
from lineloop.stack.services import ServiceFleet

app = typer.Typer(no_args_is_help=True)
console = Console()
errors = Console(stderr=True)


def _stack() -> EmbeddedStack:
    return EmbeddedStack(StackConfig.from_env(), watchdog=True)


# Opt-in for now: LINELOOP_STACK_AUTH=required makes `lineloop up` (and `lineloop demo`) issue
# their own tokens and require them (docs/security.md). Not yet the default: every client of the
# embedded stack (tests, the chaos harness) must carry credentials first.
STACK_AUTH_ENV = "LINELOOP_STACK_AUTH"
STACK_TOKEN_TTL_S = 7 * 86400


def stack_auth(state_dir: Path | None = None) -> LocalIssuer | None:
    """The embedded stack's own token issuer under `<state dir>/auth` when LINELOOP_STACK_AUTH=required, else None."""
    mode = os.environ.get(STACK_AUTH_ENV, "off")
    if mode not in ("off", "required"):
        raise typer.BadParameter(f"{STACK_AUTH_ENV}={mode!r}: off or required")
    if mode == "off":
        return None
    state_dir = state_dir or StackConfig.from_env().state_dir
    return LocalIssuer(state_dir / "auth", issuer="lineloop-embedded", audience="lineloop")


def stack_auth_env(issuer: LocalIssuer) -> dict[str, str]:
    """What the services need to require tokens from `issuer`, and their own token for calls to each other."""
    return {"LINELOOP_AUTH_MODE": "required", "LINELOOP_AUTH_ISSUER": issuer.issuer,
            "LINELOOP_AUTH_AUDIENCE": issuer.audience, "LINELOOP_AUTH_JWKS_FILE": str(issuer.jwks_file),
            "LINELOOP_TOKEN_FILE": str(issuer.service_token_file)}


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
        issuer = stack_auth(embedded.config.state_dir)
        if issuer is not None:  # the services inherit this process's environment
            issuer.init(ROLES, STACK_TOKEN_TTL_S)
            os.environ.update(stack_auth_env(issuer))
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
        if issuer is not None:
            console.print(f"gRPC APIs require tokens: export LINELOOP_TOKEN_FILE={issuer.token_file('admin')} "
                          f"(or another role's in {issuer.token_file('admin').parent})", soft_wrap=True)

    @root.command("down")
    def down() -> None:
        """Stop the services, then the stack; leaves no process behind."""
        embedded = _stack()
        with console.status("stopping…") as status:
            services = ServiceFleet(embedded.config).down(status.update)
            stopped = [r.name for r in services if r.state == "stopped"] + embedded.down(status.update)
        console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
