"""Entry point: `lakeward stack | worker | api | generate | pipeline`."""

from __future__ import annotations

import contextlib
import os
from typing import Annotated, Literal

import typer
from pydantic import ValidationError

from lakeward.cli import generate, pipeline, query, reconcile, serve, stack, token
from lakeward.logs import configure_logging
from lakeward.settings import Settings

app = typer.Typer(
    help="Lakeward: exactly-once CDC from MongoDB into Delta Lake.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    log_format: Annotated[
        str | None,
        typer.Option(
            "--log-format",
            help="Log lines as json or console (default LAKEWARD_LOG_FORMAT: json).",
        ),
    ] = None,
) -> None:
    """Lakeward: exactly-once CDC from MongoDB into Delta Lake."""
    if log_format is not None:
        if log_format not in ("json", "console"):
            raise typer.BadParameter("use json or console", param_hint="--log-format")
        # Through the environment, so `worker`, `api` and the processes `demo` starts agree.
        os.environ["LAKEWARD_LOG_FORMAT"] = log_format
    fmt: Literal["json", "console"] = "json"
    level = "info"
    # A bad setting elsewhere is the command's to report (with its own message), not logging's.
    with contextlib.suppress(ValidationError):
        settings = Settings()
        fmt, level = settings.log_format, settings.log_level
    configure_logging("cli", fmt, level)


app.add_typer(stack.app, name="stack")
app.add_typer(pipeline.app, name="pipeline")
app.add_typer(reconcile.app, name="reconcile")
app.add_typer(token.app, name="token")
app.command("generate")(generate.generate)
app.command()(serve.worker)
app.command()(serve.api)
app.command()(serve.demo)
app.command("query")(query.query)
