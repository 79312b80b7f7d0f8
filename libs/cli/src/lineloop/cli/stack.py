"""`lineloop stack up|down|status` and the top-level `up`, `down`, `demo`, `bench`."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)


def register_top_level(root: typer.Typer) -> None:
    """Commands that sit at the top level of `lineloop`."""
