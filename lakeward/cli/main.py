"""Entry point: `lakeward stack | worker | api | generate | pipeline`."""

from __future__ import annotations

import typer

from lakeward.cli import generate, pipeline, query, reconcile, serve, stack, token

app = typer.Typer(
    help="Lakeward: exactly-once CDC from MongoDB into Delta Lake.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(stack.app, name="stack")
app.add_typer(pipeline.app, name="pipeline")
app.add_typer(reconcile.app, name="reconcile")
app.add_typer(token.app, name="token")
app.command("generate")(generate.generate)
app.command()(serve.worker)
app.command()(serve.api)
app.command()(serve.demo)
app.command("query")(query.query)
