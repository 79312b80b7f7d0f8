"""`lineloop`: everything a person does by hand.

Each command group lives in its own module, owned by the area it drives.
"""

from __future__ import annotations

import typer

from lineloop.cli import auth, builds, datasets, demo, dlq, gateway, health, labels, models, runs, stack
from lineloop.cli import reconcile

app = typer.Typer(no_args_is_help=True, help="lineloop: event-driven MLOps for machine vision.")
app.add_typer(stack.app, name="stack", help="The embedded stack: Kafka API, S3, Triton on 127.0.0.1.")
app.add_typer(gateway.app, name="gateway", help="Simulate factory gateways.")
app.add_typer(labels.app, name="labels", help="Label frames.")
app.add_typer(datasets.app, name="datasets", help="Dataset versions.")
app.add_typer(runs.app, name="runs", help="Training runs.")
app.add_typer(models.app, name="models", help="Model versions, stages, promotion, rollback.")
app.add_typer(builds.app, name="builds", help="Compiled builds per target.")
app.add_typer(health.app, name="health", help="Model health and drift.")
app.add_typer(dlq.app, name="dlq", help="Dead-lettered events: list, show, replay.")
app.add_typer(auth.app, name="auth", help="Local identities: a token issuer and per-role tokens.")
stack.register_top_level(app)  # up, down
demo.register(app)
reconcile.register(app)

if __name__ == "__main__":
    app()
