"""`lakeward reconcile`: a pipeline's reconciliations (docs/reconcile.md) through the API.

The same calls as `lakeward pipeline reconcile` and `lakeward pipeline reconciliations`, under
the name operators look for first.
"""

from __future__ import annotations

from typing import Annotated

import typer

from lakeward.cli import pipeline

__all__ = ["app"]

app = typer.Typer(
    help="Reconcile a pipeline's tables with MongoDB: start a run, list runs, show a report.",
    no_args_is_help=True,
)
app.callback()(pipeline.connect)
app.command("run")(pipeline.reconcile)


@app.command("list")
def list_(ctx: typer.Context, name: str, as_json: pipeline.JsonOption = False) -> None:
    """A pipeline's reconciliation runs (newest first)."""
    pipeline.reconciliations(ctx, name, None, as_json)


@app.command()
def show(
    ctx: typer.Context,
    name: str,
    run: Annotated[str, typer.Argument(help="The run's id (from `run` or `list`).")],
    as_json: pipeline.JsonOption = False,
) -> None:
    """One run: its progress while it runs, then its report (differences with their fields)."""
    pipeline.reconciliations(ctx, name, run, as_json)
