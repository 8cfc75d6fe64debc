"""`lakeward stack up | down | status | logs`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from lakeward.settings import StackSettings
from lakeward.stack import Stack, StackError

app = typer.Typer(
    help="Run the embedded default: real servers as local processes.", no_args_is_help=True
)
console = Console()
err = Console(stderr=True, soft_wrap=True)  # one error, one line: never wrapped

StackDir = Annotated[
    Path | None,
    typer.Option("--stack-dir", envvar="LAKEWARD_STACK_DIR", help="Data, logs and PID files."),
]
With = Annotated[
    list[str] | None,
    typer.Option(
        "--with", help="Optional servers to include, comma-separated: s3,vault,prometheus,connect."
    ),
]
All = Annotated[bool, typer.Option("--all", help="Every server, optional ones included.")]


def _port_options(**given: int | None) -> dict[str, int]:
    return {k: v for k, v in given.items() if v is not None}


def _stack(stack_dir: Path | None, **overrides: int) -> Stack:
    settings = StackSettings(**overrides)  # type: ignore[arg-type]  # ports by field name
    if stack_dir is not None:
        settings = settings.model_copy(update={"stack_dir": stack_dir})
    return Stack(settings)


def _names(values: list[str] | None) -> list[str]:
    return [n.strip() for v in values or [] for n in v.split(",") if n.strip()]


def _fail(exc: StackError) -> None:
    err.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(1)


@app.command()
def up(
    stack_dir: StackDir = None,
    with_: With = None,
    all_: All = False,
    mongo_port: Annotated[int | None, typer.Option(envvar="LAKEWARD_MONGO_PORT")] = None,
    kafka_port: Annotated[int | None, typer.Option(envvar="LAKEWARD_KAFKA_PORT")] = None,
    temporal_port: Annotated[int | None, typer.Option(envvar="LAKEWARD_TEMPORAL_PORT")] = None,
    temporal_ui_port: Annotated[
        int | None, typer.Option(envvar="LAKEWARD_TEMPORAL_UI_PORT")
    ] = None,
    s3_port: Annotated[int | None, typer.Option(envvar="LAKEWARD_S3_PORT")] = None,
    vault_port: Annotated[int | None, typer.Option(envvar="LAKEWARD_VAULT_PORT")] = None,
    prometheus_port: Annotated[int | None, typer.Option(envvar="LAKEWARD_PROMETHEUS_PORT")] = None,
    connect_port: Annotated[int | None, typer.Option(envvar="LAKEWARD_CONNECT_PORT")] = None,
) -> None:
    """Start the servers (idempotent) and wait until each answers."""
    ports = _port_options(
        mongo_port=mongo_port, kafka_port=kafka_port, temporal_port=temporal_port,
        temporal_ui_port=temporal_ui_port, s3_port=s3_port, vault_port=vault_port,
        prometheus_port=prometheus_port, connect_port=connect_port,
    )  # fmt: skip
    stack = _stack(stack_dir, **ports)
    started = time.monotonic()
    try:
        servers = stack.select(_names(with_), everything=all_)
        stack.up(servers, on_event=lambda s, msg: console.print(f"  {s.name:<11} {msg}"))
    except StackError as exc:
        _fail(exc)
    console.print(f"stack up in {time.monotonic() - started:.1f}s")
    _print_status(stack, servers)


@app.command()
def setup(stack_dir: StackDir = None, with_: With = None, all_: All = False) -> None:
    """Check prerequisites and resolve jars from Maven Central (no server is started)."""
    stack = _stack(stack_dir)
    try:
        servers = stack.select(_names(with_), everything=all_)
        stack.install(servers)
    except StackError as exc:
        _fail(exc)
    console.print(f"ready to start: {', '.join(s.name for s in servers)}")


@app.command()
def down(stack_dir: StackDir = None) -> None:
    """Stop every running server of the stack; data is kept."""
    stack = _stack(stack_dir)
    stopped = stack.down()
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@app.command()
def status(
    stack_dir: StackDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Each server's address, state and version."""
    stack = _stack(stack_dir)
    if as_json:
        print(json.dumps([row.as_dict() for row in stack.status()], indent=2))
        return
    _print_status(stack, stack.servers)


@app.command()
def logs(
    server: Annotated[str, typer.Argument(help="A server, or worker or api.")],
    stack_dir: StackDir = None,
    lines: Annotated[int, typer.Option("-n", help="How many lines.")] = 100,
) -> None:
    """The last lines of a server's log."""
    try:
        print(_stack(stack_dir).logs(server, lines))
    except StackError as exc:
        _fail(exc)


def _print_status(stack: Stack, servers: list) -> None:
    table = Table("server", "address", "state", "version", "pid")
    colours = {"running": "green", "stopped": "dim", "unhealthy": "red"}
    for row in stack.status(servers):
        table.add_row(row.server, row.address, f"[{colours[row.state]}]{row.state}[/]", row.version,
                      str(row.pid or ""))  # fmt: skip
    console.print(table)
