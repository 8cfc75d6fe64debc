"""`lakeward pipeline ...`: create and drive pipelines through the HTTP API.

Every command is one or a few API calls (httpx); tables for people, `--json` for scripts, progress
while waiting for a state. The API address is `--api-url` / LAKEWARD_API_URL (default
http://<LAKEWARD_API_HOST>:<LAKEWARD_API_PORT>); the token is LAKEWARD_API_TOKEN, else
LAKEWARD_ADMIN_TOKEN, else the `.lakeward/admin-token` the embedded default generated.
Problems the API answers (RFC 9457) are printed as one clear line, field errors below it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from lakeward.settings import Settings
from lakeward.spec_file import SpecFileError, load_spec_text
from lakeward.tokens import client_token

__all__ = ["ApiClient", "ApiError", "app"]

app = typer.Typer(
    help="Create, inspect and control pipelines through the Lakeward API.",
    no_args_is_help=True,
)
console = Console()
err = Console(stderr=True, soft_wrap=True)

#: States a pipeline does not leave on its own.
ENDED = {"STOPPED", "FAILED"}


class ApiError(Exception):
    """A call the API refused or could not answer; str() is the line to show."""

    def __init__(self, message: str, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class ApiClient:
    """The few calls the CLI makes; problem+json answers become ApiError."""

    def __init__(self, base_url: str, token: str | None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(
                f"cannot reach the API at {self.base_url} ({type(exc).__name__}: {exc}); "
                "is `lakeward api` running? (--api-url / LAKEWARD_API_URL)"
            ) from None
        if response.is_success:
            return response.json()
        raise _problem(response)


def _problem(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    title = body.get("title") or response.reason_phrase
    detail = body.get("detail") or response.text[:200]
    hint = ""
    if response.status_code == 401:
        hint = " (set LAKEWARD_API_TOKEN, or LAKEWARD_ADMIN_TOKEN; see `lakeward token`)"
    return ApiError(f"{title} ({response.status_code}): {detail}{hint}", body.get("errors"))


def _api(ctx: typer.Context) -> ApiClient:
    return ctx.obj  # type: ignore[no-any-return]


@app.callback()
def connect(
    ctx: typer.Context,
    api_url: Annotated[
        str | None,
        typer.Option("--api-url", help="API address (default LAKEWARD_API_URL, else local)."),
    ] = None,
) -> None:
    settings = Settings()
    url = api_url or settings.api_url or f"http://{settings.api_host}:{settings.api_port}"
    ctx.obj = api = ApiClient(url, client_token(settings))
    ctx.call_on_close(api.http.close)


def _fail(exc: ApiError) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(str(exc))}")
    for error in exc.errors:
        err.print(f"  {escape(error.get('field') or 'spec')}: {escape(error.get('message', ''))}")
    return typer.Exit(1)


def _run(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except ApiError as exc:
        raise _fail(exc) from None


def _print_json(body: Any) -> None:
    sys.stdout.write(json.dumps(body, indent=2, sort_keys=True) + "\n")


def _load(path: Path) -> Any:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
        return load_spec_text(text)
    except (OSError, UnicodeDecodeError, SpecFileError) as exc:
        raise _fail(ApiError(f"cannot read {path}: {exc}")) from None


def _fmt_lag(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _print_status(status: dict[str, Any]) -> None:
    state = status["state"]
    colour = {"STREAMING": "green", "PAUSED": "yellow", "FAILED": "red"}.get(state, "cyan")
    console.print(f"pipeline [bold]{escape(status['name'])}[/] is [{colour}]{state}[/]")
    if status.get("last_error"):
        console.print(f"  last error: {escape(status['last_error'])}", soft_wrap=True)
    table = Table("table", "Delta version", "applied", "backlog", "lag", "snapshot", "uri")
    for name, uri in sorted(status["tables"].items()):
        progress = status.get("progress", {}).get(name, {})
        version = progress.get("delta_version")
        table.add_row(
            escape(name),
            "-" if version is None else str(version),
            str(progress.get("applied", 0)),
            str(progress.get("backlog", 0)),
            _fmt_lag(progress.get("lag_seconds")),
            str(progress.get("snapshot", "-")),
            escape(uri),
        )
    console.print(table)


def _wait_for(
    api: ApiClient, name: str, wanted: set[str], timeout: float, what: str
) -> dict[str, Any]:
    """Poll the status until its state is one of `wanted` (or ended), with a live progress line."""
    deadline = time.monotonic() + timeout
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(what)
        while True:
            status = _run(lambda: api.call("GET", f"/v1/pipelines/{name}"))
            state = status["state"]
            detail = _snapshot_progress(status)
            progress.update(task, description=f"{what}: {state}{detail}")
            # PAUSED counts once the batches that were running have committed: from then on
            # the tables stay as they are.
            settled = state != "PAUSED" or not status.get("batches_in_flight")
            if (state in wanted and settled) or state in ENDED:
                break
            if time.monotonic() > deadline:
                raise _fail(ApiError(f"pipeline {name!r} still {state} after {timeout:.0f}s"))
            time.sleep(0.5)
    if state not in wanted:
        error = status.get("last_error") or "no error recorded"
        raise _fail(ApiError(f"pipeline {name!r} is {state}: {error}"))
    return status  # type: ignore[no-any-return]


def _snapshot_progress(status: dict[str, Any]) -> str:
    copied = sum(p.get("snapshot_documents", 0) for p in status.get("progress", {}).values())
    return f" ({copied} documents copied)" if status["state"] == "SNAPSHOTTING" else ""


JsonOption = Annotated[bool, typer.Option("--json", help="Print the API's JSON answer.")]
WaitTimeout = Annotated[float, typer.Option(help="Seconds --wait waits at most.")]


@app.command()
def create(
    ctx: typer.Context,
    file: Annotated[Path, typer.Option("-f", "--file", help="The pipeline spec (YAML or JSON).")],
    wait: Annotated[bool, typer.Option("--wait", help="Wait until it is STREAMING.")] = False,
    timeout: WaitTimeout = 600.0,
    as_json: JsonOption = False,
) -> None:
    """Create and start a pipeline (the same spec again is harmless)."""
    api = _api(ctx)
    spec = _load(file)
    status = _run(lambda: api.call("POST", "/v1/pipelines", json=spec))
    if wait:
        status = _wait_for(api, status["name"], {"STREAMING"}, timeout, "starting")
    if as_json:
        _print_json(status)
    else:
        _print_status(status)


@app.command("list")
def list_(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(help="Only this state, e.g. PAUSED.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List running pipelines."""
    params = {"state": state} if state else {}
    body = _run(lambda: _api(ctx).call("GET", "/v1/pipelines", params=params))
    if as_json:
        _print_json(body)
        return
    table = Table("name", "state", "capture", "workflow id")
    for item in body["pipelines"]:
        table.add_row(*(escape(str(item.get(k) or "-")) for k in
                        ("name", "state", "source", "workflow_id")))  # fmt: skip
    console.print(table)


@app.command()
def status(ctx: typer.Context, name: str, as_json: JsonOption = False) -> None:
    """A pipeline's state, tables, progress and freshness."""
    body = _run(lambda: _api(ctx).call("GET", f"/v1/pipelines/{name}"))
    if as_json:
        _print_json(body)
    else:
        _print_status(body)


def _signal(
    ctx: typer.Context, name: str, action: str, wanted: str | None, timeout: float, as_json: bool
) -> None:
    api = _api(ctx)
    method, path = ("DELETE", f"/v1/pipelines/{name}") if action == "stop" else (
        "POST", f"/v1/pipelines/{name}:{action}")  # fmt: skip
    body = _run(lambda: api.call(method, path))
    if wanted:
        body = _wait_for(api, name, {wanted}, timeout, f"{action} sent")
    if as_json:
        _print_json(body)
    elif wanted:
        _print_status(body)
    else:
        console.print(f"{action} sent to pipeline [bold]{escape(name)}[/]")


WaitOption = Annotated[bool, typer.Option("--wait", help="Wait until the state is reached.")]


@app.command()
def pause(
    ctx: typer.Context,
    name: str,
    wait: WaitOption = False,
    timeout: WaitTimeout = 120.0,
    as_json: JsonOption = False,
) -> None:
    """Pause: the batch in flight commits, then nothing is applied until resume."""
    _signal(ctx, name, "pause", "PAUSED" if wait else None, timeout, as_json)


@app.command()
def resume(
    ctx: typer.Context,
    name: str,
    wait: WaitOption = False,
    timeout: WaitTimeout = 120.0,
    as_json: JsonOption = False,
) -> None:
    """Resume applying from the offsets recorded in the Delta log."""
    _signal(ctx, name, "resume", "STREAMING" if wait else None, timeout, as_json)


@app.command()
def stop(
    ctx: typer.Context,
    name: str,
    wait: WaitOption = False,
    timeout: WaitTimeout = 120.0,
    as_json: JsonOption = False,
) -> None:
    """Stop the pipeline for good (its tables stay)."""
    _signal(ctx, name, "stop", "STOPPED" if wait else None, timeout, as_json)


@app.command()
def snapshot(
    ctx: typer.Context,
    name: str,
    collection: Annotated[
        list[str] | None,
        typer.Option("--collection", "-c", help="Collection to copy (repeatable; default all)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Copy collections again (a re-sync); rows of documents gone meanwhile are removed."""
    body = {"collections": collection or []}
    answer = _run(lambda: _api(ctx).call("POST", f"/v1/pipelines/{name}:snapshot", json=body))
    if as_json:
        _print_json(answer)
    else:
        console.print(f"copying again: {escape(', '.join(answer['collections']))}")


@app.command()
def reconcile(
    ctx: typer.Context,
    name: str,
    collection: Annotated[
        list[str] | None,
        typer.Option("--collection", "-c", help="Collection to compare (repeatable; default all)."),
    ] = None,
    repair: Annotated[
        bool | None, typer.Option("--repair/--no-repair", help="Default: the spec's.")
    ] = None,
    mode: Annotated[str | None, typer.Option(help="fast or deep; default: the spec's.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until the run ends.")] = False,
    timeout: WaitTimeout = 3600.0,
    as_json: JsonOption = False,
) -> None:
    """Start a reconciliation now; prints its id (`reconciliations NAME ID` follows it)."""
    api = _api(ctx)
    body: dict[str, Any] = {"collections": collection or []}
    if repair is not None:
        body["repair"] = repair
    if mode:
        body["mode"] = mode
    started = _run(lambda: api.call("POST", f"/v1/pipelines/{name}:reconcile", json=body))
    answer = started
    if wait:
        answer = _wait_for_reconciliation(api, name, started["id"], timeout)
    if as_json:
        _print_json(answer)
    elif wait:
        _print_reconciliation(answer)
    else:
        console.print(f"reconciliation [bold]{escape(started['id'])}[/] started")


def _wait_for_reconciliation(api: ApiClient, name: str, run: str, timeout: float) -> Any:
    path = f"/v1/pipelines/{name}/reconciliations/{run}"
    deadline = time.monotonic() + timeout
    columns = (
        TextColumn("reconciling"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("reconcile", total=100)
        while True:
            detail = _run(lambda: api.call("GET", path))
            if detail["status"] != "RUNNING":
                return detail
            percent = (detail.get("progress") or {}).get("percent")
            if isinstance(percent, int | float):
                progress.update(task, completed=percent)
            if time.monotonic() > deadline:
                raise _fail(ApiError(f"reconciliation {run!r} still running after {timeout:.0f}s"))
            time.sleep(1.0)


def _print_reconciliation(detail: dict[str, Any]) -> None:
    console.print(f"reconciliation [bold]{escape(detail['id'])}[/]: {detail['status']}")
    for key in ("failure", "progress", "result"):
        if detail.get(key) is not None:
            console.print(f"{key}:", escape(json.dumps(detail[key], indent=2)), soft_wrap=True)


@app.command()
def reconciliations(
    ctx: typer.Context,
    name: str,
    run: Annotated[str | None, typer.Argument(help="One run's id: its progress or report.")] = None,
    as_json: JsonOption = False,
) -> None:
    """A pipeline's reconciliation runs, or one run in detail."""
    path = f"/v1/pipelines/{name}/reconciliations" + (f"/{run}" if run else "")
    body = _run(lambda: _api(ctx).call("GET", path))
    if as_json:
        _print_json(body)
    elif run:
        _print_reconciliation(body)
    else:
        table = Table("id", "status", "started", "closed")
        for item in body["reconciliations"]:
            table.add_row(*(escape(str(item.get(k) or "-")) for k in
                            ("id", "status", "started_at", "closed_at")))  # fmt: skip
        console.print(table)


@app.command()
def reconfigure(
    ctx: typer.Context,
    name: str,
    file: Annotated[
        Path, typer.Option("-f", "--file", help="A partial spec (YAML or JSON): the changes.")
    ],
    as_json: JsonOption = False,
) -> None:
    """Change a running pipeline: the file is merged into its spec (JSON merge patch).

    A null value removes a setting, so its default applies.
    """
    patch = _load(file)
    answer = _run(
        lambda: _api(ctx).call(
            "PATCH",
            f"/v1/pipelines/{name}",
            content=json.dumps(patch),
            headers={"Content-Type": "application/merge-patch+json"},
        )
    )
    if as_json:
        _print_json(answer)
        return
    if not (answer["changed"] or answer["added"] or answer["removed"]):
        console.print("nothing changed")
    for key in ("changed", "added", "removed"):
        if answer[key]:
            console.print(f"{key}: {escape(', '.join(answer[key]))}")
