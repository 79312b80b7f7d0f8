"""What every `lineloop` command group shares: service addresses, output, gRPC errors."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import typer
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console

from lineloop.contracts.catalogue import service as catalogued_service
from lineloop.runtime.client import refusal_hint
from lineloop.runtime.errors import error_info

console = Console()
err_console = Console(stderr=True)



def grpc_target(service: str, override: str | None = None) -> str:
    """`--target`, else LINELOOP_<SERVICE>_GRPC, else the catalogue's gRPC port on 127.0.0.1."""
    return override or os.environ.get(f"LINELOOP_{service.upper()}_GRPC") or f"127.0.0.1:{catalogued_service(service).grpc_port}"


def to_dict(msg: Message) -> dict:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def print_json(value: Message | list | dict) -> None:
    if isinstance(value, Message):
        value = to_dict(value)
    elif isinstance(value, list):
        value = [to_dict(v) if isinstance(v, Message) else v for v in value]
    typer.echo(json.dumps(value, indent=2, sort_keys=True))


@contextmanager
def rpc_errors(service: str, target: str) -> Iterator[None]:
    """Turn a gRPC failure into one clear line on stderr and a non-zero exit."""
    try:
        yield
    except grpc.RpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            err_console.print(f"[red]{service} is not reachable at {target}[/red] (is `make up` running?): {exc.details()}")
            raise typer.Exit(3) from None
        info = error_info(exc)
        reason = f" [{info.reason}]" if info else ""
        err_console.print(f"[red]{service}: {code.name}{reason}[/red]: {exc.details()}")
        hint = refusal_hint(exc)
        if hint:
            err_console.print(hint)
        raise typer.Exit(1) from None
