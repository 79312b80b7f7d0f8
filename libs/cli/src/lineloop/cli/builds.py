"""`lineloop builds list|show|compile`: compiled builds per target, from the compiler service.

Talks to the compiler over gRPC (`--target`, else `LINELOOP_COMPILER_GRPC`, else 127.0.0.1:50055).
"""

from __future__ import annotations

import typer
from rich.table import Table

from lineloop.cli.common import console, grpc_target, print_json, rpc_errors
from lineloop.runtime.client import channel as grpc_channel
from lineloop.v1 import compiler_pb2
from lineloop.v1.compiler_pb2_grpc import CompilerServiceStub
from lineloop.v1.events_pb2 import BuildStatus, ModelCompiled

app = typer.Typer(no_args_is_help=True)

TargetOption = typer.Option(None, "--target", help="Compiler gRPC address (default LINELOOP_COMPILER_GRPC or 127.0.0.1:50055).")
JsonOption = typer.Option(False, "--json", help="Machine-readable output.")


def _status(build: ModelCompiled) -> str:
    name = BuildStatus.Name(build.status).removeprefix("BUILD_STATUS_").lower()
    return "pending" if name == "unspecified" else name


def _table(builds: list[ModelCompiled]) -> Table:
    table = Table("build", "model", "version", "target", "status", "agreement", "max abs err", "p50 ms", "p99 ms",
                  "throughput/s", "reason")
    for b in builds:
        v = b.verification
        measured = v.samples > 0
        table.add_row(
            b.build_id, b.model_name, b.version, b.target, _status(b),
            f"{v.top1_agreement:.4f}" if measured else "", f"{v.max_abs_error:.2e}" if measured else "",
            f"{v.latency_p50_ms:.2f}" if measured else "", f"{v.latency_p99_ms:.2f}" if measured else "",
            f"{v.throughput_per_s:.0f} @{v.batch_size}" if measured else "", b.reason,
        )
    return table


@app.command("list")
def list_builds(
    model: str = typer.Option("", "--model", help="Only this model."),
    version: str = typer.Option("", "--version", help="Only this version."),
    target: str | None = TargetOption,
    as_json: bool = JsonOption,
) -> None:
    """Builds with their status and verification figures."""
    address = grpc_target("compiler", target)
    with rpc_errors("compiler", address), grpc_channel(address) as channel:
        reply = CompilerServiceStub(channel).ListBuilds(
            compiler_pb2.ListBuildsRequest(model_name=model, version=version), timeout=30
        )
    if as_json:
        print_json(list(reply.builds))
    else:
        console.print(_table(list(reply.builds)))


@app.command("show")
def show(build_id: str, target: str | None = TargetOption, as_json: bool = JsonOption) -> None:
    """One build: status, verification report, manifest, artifacts, signing key."""
    address = grpc_target("compiler", target)
    with rpc_errors("compiler", address), grpc_channel(address) as channel:
        build = CompilerServiceStub(channel).GetBuild(compiler_pb2.GetBuildRequest(build_id=build_id), timeout=30)
    if as_json:
        print_json(build)
        return
    console.print(_table([build]))
    if build.manifest.key:
        console.print(f"manifest  s3://{build.manifest.bucket}/{build.manifest.key}  sha256 {build.manifest.sha256}")
        console.print(f"signature Ed25519, key {build.key_id}")
    for artifact in build.artifacts:
        console.print(f"artifact  s3://{artifact.bucket}/{artifact.key}  {artifact.size_bytes} B  sha256 {artifact.sha256}")


@app.command("compile")
def compile_(
    model: str,
    version: str,
    targets: list[str] = typer.Option([], "--profile", help="Target profile (repeatable; default: every profile)."),
    target: str | None = TargetOption,
    as_json: bool = JsonOption,
    wait_s: float = typer.Option(600.0, "--wait", help="Seconds to wait for the builds."),
) -> None:
    """Build a registered version for the given target profiles now, and wait for the results."""
    address = grpc_target("compiler", target)
    with rpc_errors("compiler", address), grpc_channel(address) as channel, console.status("building..."):
        reply = CompilerServiceStub(channel).Compile(
            compiler_pb2.CompileRequest(model_name=model, version=version, targets=targets), timeout=wait_s
        )
    if as_json:
        print_json(list(reply.builds))
    else:
        console.print(_table(list(reply.builds)))
