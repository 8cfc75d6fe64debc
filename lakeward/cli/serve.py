"""`lakeward worker` and `lakeward api`: the two long-running processes."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from lakeward.logs import configure_logging
from lakeward.settings import Settings


def worker(
    queues: Annotated[
        str | None,
        typer.Option(
            help="Task queues to poll, comma-separated: workflow, io, cpu "
            "(default LAKEWARD_WORKER_QUEUES: all of them)."
        ),
    ] = None,
) -> None:
    """Run a Temporal worker: pipeline workflows plus capture and apply activities."""
    from workers.main import parse_queues, run_worker  # composition root: only when serving

    settings = Settings() if queues is None else Settings(worker_queues=queues)
    configure_logging("worker", settings.log_format, settings.log_level)
    try:
        parse_queues(settings.worker_queues)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--queues") from None
    asyncio.run(run_worker(settings))


def api(
    host: Annotated[
        str | None, typer.Option(help="Bind address (default LAKEWARD_API_HOST).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port (default LAKEWARD_API_PORT, 8000).")
    ] = None,
) -> None:
    """Serve the HTTP API (uvicorn; use gunicorn with uvicorn workers in production)."""
    import uvicorn

    from api.app import create_app

    settings = Settings()
    configure_logging("api", settings.log_format, settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_level=settings.log_level,
        # uvicorn's own loggers go through configure_logging's format; no line per request
        # (lakeward_api_requests_total counts them, the audit log records every change).
        log_config=None,
        access_log=False,
    )


def demo(
    down: Annotated[
        bool, typer.Option("--down", help="Stop worker, API and stack instead.")
    ] = False,
    operations: Annotated[int, typer.Option(help="Changes to write into MongoDB.")] = 10_000,
    rate: Annotated[float, typer.Option(help="Changes per second.")] = 2000.0,
    seed: Annotated[int | None, typer.Option(help="Generator seed (default: the clock).")] = None,
) -> None:
    """Run the main job on the embedded default: create, write, pause, resume, compare, stop."""
    from rich.console import Console

    from lakeward.demo import DemoOptions, run_demo, stop_demo
    from lakeward.stack import StackError

    if down:
        stopped = stop_demo()
        Console().print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
        return
    try:
        run_demo(DemoOptions(operations=operations, rate=rate, seed=seed))
    except StackError as exc:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from None
