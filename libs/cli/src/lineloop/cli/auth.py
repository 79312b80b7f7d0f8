"""`lineloop auth init`: a signing key, its JWKS and one token per role, for a deployment without an identity provider."""

from __future__ import annotations

from pathlib import Path

import typer

from lineloop.cli.common import console
from lineloop.contracts.access import ROLES
from lineloop.runtime.pki import LocalIssuer

app = typer.Typer(no_args_is_help=True)


@app.command()
def init(
    folder: Path = typer.Argument(..., help="Where to write signing.key, tokens/<role>.jwt and service/ (jwks.json, token)."),
    issuer: str = typer.Option("lineloop-local", "--issuer", help="The tokens' `iss` (LINELOOP_AUTH_ISSUER)."),
    audience: str = typer.Option("lineloop", "--audience", help="The tokens' `aud` (LINELOOP_AUTH_AUDIENCE)."),
    ttl_days: float = typer.Option(30.0, "--ttl-days", min=0.001, help="How long the tokens are valid."),
) -> None:
    """Create (or refresh) a local token issuer; the key is kept, the tokens are minted anew."""
    local = LocalIssuer(folder, issuer, audience)
    local.init(ROLES, ttl_days * 86400)
    console.print(f"issuer {issuer!r}, audience {audience!r}: JWKS {local.jwks_file}")
    console.print(f"tokens (valid {ttl_days:g} days): {local.token_file('<role>')} for {', '.join(ROLES)}")
    console.print("services: LINELOOP_AUTH_MODE=required LINELOOP_AUTH_ISSUER/_AUDIENCE as above, "
                  f"LINELOOP_AUTH_JWKS_FILE={local.jwks_file}, LINELOOP_TOKEN_FILE={local.service_token_file} "
                  f"(mount only {local.jwks_file.parent} into services)")
    console.print(f"you: export LINELOOP_TOKEN_FILE={local.token_file('admin')} (or the token of your role)")
