"""`lakeward demo`: the main job on the embedded default, end to end, through the API only.

Brings the stack up, starts a worker and the API as background processes, creates a pipeline on a
generated collection, writes inserts, updates and deletes, waits until the Delta table matches
MongoDB; pauses the pipeline, writes more and shows the table does not move; resumes and waits
until it matches again; prints both side by side (the lake read through DuckDB) and stops the
pipeline.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from lakeward import duck
from lakeward.generate import GenerateError, Generator, open_collection, run
from lakeward.settings import Settings, StackSettings
from lakeward.stack import Stack, StackError
from lakeward.stack.process import wait_until
from lakeward.tokens import client_token

__all__ = ["DemoOptions", "run_demo", "stop_demo"]

console = Console()


@dataclass(frozen=True)
class DemoOptions:
    operations: int = 10_000
    #: Changes written while the pipeline is paused (default: a tenth of `operations`).
    paused_operations: int | None = None
    #: How long the demo watches the paused pipeline's table not move.
    paused_watch_s: float = 3.0
    rate: float = 2000.0
    database: str = "shop"
    collection: str = "orders"
    pipeline: str = "demo"
    seed: int | None = None
    timeout_s: float = 180.0


def _service_env(settings: StackSettings) -> dict[str, str]:
    ui = settings.temporal_ui_port
    return {
        "LAKEWARD_TEMPORAL_ADDRESS": settings.temporal_address,
        "LAKEWARD_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "LAKEWARD_API_HOST": settings.host,
        "LAKEWARD_API_PORT": str(settings.api_port),
        # The stack's Web UI decodes payloads through the API's codec endpoint (encryption.md).
        "LAKEWARD_CODEC_CORS_ORIGINS": json.dumps(
            [f"http://{settings.host}:{ui}", f"http://localhost:{ui}"]
        ),
    }


def start_services(stack: Stack) -> str:
    """Start `lakeward worker` and `lakeward api` unless running; returns the API base URL."""
    settings = stack.ctx.settings
    lakeward = str(Path(sys.executable).parent / "lakeward")
    for name in ("worker", "api"):
        process = stack.service(name)
        if not process.is_running():
            process.start([lakeward, name], cwd=Path.cwd(), env=_service_env(settings))
            console.print(
                f"  {name:<11} started (pid {process.read_pid()}, log {process.log_file})"
            )
        else:
            console.print(f"  {name:<11} already running")
    base = f"http://{settings.host}:{settings.api_port}"
    api = stack.service("api")

    def ready() -> bool:
        try:
            return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    if not wait_until(ready, 60, interval=0.25, alive=api.is_running):
        raise StackError(
            f"the API did not become ready; last lines of {api.log_file}:\n{api.tail(20)}"
        )
    return base


def stop_demo(settings: StackSettings | None = None) -> list[str]:
    """Stop the worker, the API and the stack (data is kept)."""
    stack = Stack(settings or StackSettings())
    stopped = [name for name in ("api", "worker") if stack.service(name).stop()]
    return stopped + stack.down()


def _eventually(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    if not wait_until(check, timeout_s, interval=0.5):
        raise StackError(f"timed out after {timeout_s:.0f}s waiting until {what}")


def run_demo(options: DemoOptions, settings: StackSettings | None = None) -> None:
    settings = settings or StackSettings()
    stack = Stack(settings)
    console.rule("[bold]1. local stack")
    stack.up(stack.select(), on_event=lambda s, msg: console.print(f"  {s.name:<11} {msg}"))
    console.rule("[bold]2. worker and API")
    base = start_services(stack)

    console.rule("[bold]3. pipeline")
    lake = (Path.cwd() / ".lakeward" / "lake").resolve()
    spec = {
        "name": options.pipeline,
        "source": {
            "uri": settings.mongo_uri,
            "database": options.database,
            "collections": [options.collection],
        },
        "sink": {"uri": str(lake)},
    }
    token = client_token(Settings())  # the API started above generated it, if unset
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    api = _Api(base, headers)
    response = httpx.post(f"{base}/v1/pipelines", json=spec, timeout=30, headers=headers)
    if response.status_code not in (200, 201):
        raise StackError(f"creating the pipeline failed ({response.status_code}): {response.text}")
    status = response.json()
    table_uri = status["tables"][f"{options.database}.{options.collection}"]
    console.print(f"  pipeline [bold]{options.pipeline}[/] is {status['state']}; table {table_uri}")

    console.rule("[bold]4. writing changes into MongoDB")
    seed = options.seed if options.seed is not None else int(time.time())
    generator = Generator(seed=seed, mix="insert:70,update:25,delete:5")
    try:
        client, collection = open_collection(
            settings.mongo_uri, options.database, options.collection
        )
    except GenerateError as exc:
        raise StackError(str(exc)) from exc
    with client:
        result = run(collection, generator.batches(options.operations, transactions=0.05),
                     rate=options.rate)  # fmt: skip
        counts = ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items()))
        console.print(f"  seed {seed}: {counts} ({result.ops_elapsed_s:.1f}s)")

        console.rule("[bold]5. waiting for the lake to match the source")
        source_ids = lambda: {str(d["_id"]) for d in collection.find({}, {"_id": 1})}  # noqa: E731
        started = time.monotonic()
        _eventually(lambda: _lake_ids(table_uri) == source_ids(), options.timeout_s,
                    "the Delta table holds exactly the source's documents")  # fmt: skip
        console.print(f"  caught up {time.monotonic() - started:.1f}s after the last write")

        console.rule("[bold]6. paused: changes wait in Kafka")
        api.post(f"/v1/pipelines/{options.pipeline}:pause")
        _eventually(lambda: api.is_paused(options.pipeline), 60,
                    "the pipeline paused and its batches in flight ended")  # fmt: skip
        version = _table_version(table_uri)
        result = run(
            collection,
            generator.batches(options.paused_operations or max(1, options.operations // 10)),
            rate=options.rate,
        )
        # Nothing runs now; watch the table for a while to show it stays put.
        time.sleep(options.paused_watch_s)
        moved = _table_version(table_uri) != version
        differs = _lake_ids(table_uri) != source_ids()
        console.print(
            f"  wrote {sum(result.counts.values())} changes; table version "
            f"{'moved' if moved else f'stays at {version}'}; lake "
            f"{'differs from' if differs else 'equals'} the source"
        )

        console.rule("[bold]7. resumed: the lake catches up")
        api.post(f"/v1/pipelines/{options.pipeline}:resume")
        started = time.monotonic()
        _eventually(lambda: _lake_ids(table_uri) == source_ids(), options.timeout_s,
                    "the resumed pipeline caught up")  # fmt: skip
        console.print(f"  caught up {time.monotonic() - started:.1f}s after resuming")
        source_count = collection.count_documents({})
    _print_result(table_uri, source_count, settings)

    console.rule("[bold]8. stopped")
    api.delete(f"/v1/pipelines/{options.pipeline}")
    _eventually(lambda: api.state(options.pipeline) == "STOPPED", 60, "the pipeline stopped")
    console.print(
        f"  pipeline [bold]{options.pipeline}[/] is STOPPED; `make demo` creates it again and "
        "it resumes where it stopped"
    )


@dataclass(frozen=True)
class _Api:
    base: str
    headers: dict[str, str]

    def post(self, path: str) -> None:
        self._check(httpx.post(f"{self.base}{path}", headers=self.headers, timeout=30))

    def delete(self, path: str) -> None:
        self._check(httpx.delete(f"{self.base}{path}", headers=self.headers, timeout=30))

    def status(self, pipeline: str) -> dict[str, Any]:
        response = httpx.get(
            f"{self.base}/v1/pipelines/{pipeline}", headers=self.headers, timeout=30
        )
        self._check(response)
        return dict(response.json())

    def state(self, pipeline: str) -> str:
        return str(self.status(pipeline)["state"])

    def is_paused(self, pipeline: str) -> bool:
        """PAUSED, and the batches that were running (perhaps waiting for records) have ended."""
        status = self.status(pipeline)
        return status["state"] == "PAUSED" and not status.get("batches_in_flight")

    @staticmethod
    def _check(response: httpx.Response) -> None:
        if response.status_code >= 400:
            raise StackError(
                f"{response.request.method} {response.request.url.path} failed "
                f"({response.status_code}): {response.text}"
            )


def _table_version(table_uri: str) -> int:
    """The table's latest version, from its log's commit file names (a local lake)."""
    commits = (Path(table_uri) / "_delta_log").glob("*.json")
    return max((int(c.stem) for c in commits if c.stem.isdigit()), default=-1)


def _lake_ids(table_uri: str) -> set[str]:
    if not (Path(table_uri) / "_delta_log").exists():
        return set()
    return {row[0] for row in duck.connect().execute(
        f"SELECT _id FROM delta_scan('{table_uri}')").fetchall()}  # fmt: skip


def _print_result(table_uri: str, source_count: int, settings: StackSettings) -> None:
    con = duck.connect()
    lake_count = con.execute(f"SELECT count(*) FROM delta_scan('{table_uri}')").fetchone()[0]  # type: ignore[index]
    summary = Table("", "MongoDB (source)", "Delta Lake (via DuckDB)", title="current state")
    summary.add_row("documents", str(source_count), str(lake_count))
    console.print(summary)
    sample = Table("_id", "_op", "order_no", "status", "_source_ts", title="latest rows")
    for row in con.execute(
        "SELECT _id, _op, order_no, status, _source_ts "
        f"FROM delta_scan('{table_uri}') ORDER BY _seq DESC LIMIT 5"
    ).fetchall():
        sample.add_row(*[str(v) for v in row])
    console.print(sample)
    ui = f"http://{settings.host}:{settings.temporal_ui_port}"
    console.print(f"Temporal Web UI: [bold]{ui}/namespaces/default/workflows/pipeline:demo[/]")
    console.print(
        f"API: http://{settings.host}:{settings.api_port}/docs   Stop everything: make down"
    )
