"""`lakeward pipeline` and `lakeward token` against a live API (uvicorn on the test stack's API
port) and an in-process worker on the real local stack.

The CLI runs in a thread (typer's CliRunner), so the event loop keeps serving the API and the
worker while a command waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
import yaml
from click.testing import Result
from pydantic import SecretStr
from pymongo import MongoClient
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError
from typer.testing import CliRunner

from api.app import create_app
from lakeward.cli.main import app as cli
from lakeward.settings import Settings
from workers.main import build_workers
from workflows.contracts import DATA_CONVERTER

pytestmark = pytest.mark.slow
ADMIN = "lwt_cli-test-admin"


@dataclass
class Live:
    url: str
    settings: Settings
    tmp: Path

    async def run(self, *args: str, token: str | None = ADMIN) -> Result:
        env = {
            "COLUMNS": "250",
            "LAKEWARD_API_TOKENS_FILE": str(self.settings.api_tokens_file),
            "LAKEWARD_ADMIN_TOKEN_FILE": str(self.tmp / "no-admin-token"),
            "LAKEWARD_API_TOKEN": token or "",
            "LAKEWARD_ADMIN_TOKEN": "",
        }
        if args[0] in ("pipeline", "reconcile"):
            args = (args[0], "--api-url", self.url, *args[1:])
        return await asyncio.to_thread(CliRunner().invoke, cli, list(args), env=env)


@pytest.fixture
async def live(core_stack, unique, tmp_path) -> AsyncIterator[Live]:
    settings = Settings(
        temporal_address=core_stack.temporal_address,
        kafka_bootstrap=core_stack.kafka_bootstrap,
        task_queue=f"wf-{unique}",
        io_task_queue=f"io-{unique}",
        cpu_task_queue=f"cpu-{unique}",
        topic_prefix=f"t{unique}",
        admin_token=SecretStr(ADMIN),
        api_tokens_file=tmp_path / "tokens.json",
        audit_log=tmp_path / "audit.log",
    )
    client = await Client.connect(settings.temporal_address, data_converter=DATA_CONVERTER)
    executor = ThreadPoolExecutor(max_workers=settings.io_max_concurrent)
    workers, activities = build_workers(client, settings, executor)
    runs = [asyncio.create_task(w.run()) for w in workers]
    config = uvicorn.Config(
        create_app(settings, client=client),
        host=core_stack.host,
        port=core_stack.api_port,
        log_level="warning",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        assert not serving.done(), "uvicorn did not start (port taken?)"
        await asyncio.sleep(0.05)
    try:
        yield Live(f"http://{core_stack.host}:{core_stack.api_port}", settings, tmp_path)
    finally:
        server.should_exit = True
        await serving
        async for execution in client.list_workflows(f"TaskQueue = 'wf-{unique}'"):
            if execution.status == WorkflowExecutionStatus.RUNNING:
                with contextlib.suppress(RPCError):
                    await client.get_workflow_handle(execution.id).terminate("test over")
        await asyncio.gather(*(w.shutdown() for w in workers))
        await asyncio.gather(*runs, return_exceptions=True)
        activities.close()
        executor.shutdown(wait=False)


def _ok(result: Result) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def _refused(result: Result) -> str:
    assert result.exit_code == 1, (result.output, result.exception)
    return result.output


async def test_a_pipeline_driven_from_the_cli(live: Live, core_stack, unique, tmp_path) -> None:
    name = f"cli-{unique}"
    db = f"cli_{unique}"
    with MongoClient(core_stack.mongo_uri) as mongo:
        mongo[db].orders.insert_many([{"_id": i, "n": i} for i in range(50)])
    spec = {
        "name": name,
        "source": {"uri": core_stack.mongo_uri, "database": db, "collections": ["orders"]},
        "sink": {"uri": str(tmp_path / "lake")},
    }
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))

    created = _ok(await live.run("pipeline", "create", "-f", str(spec_file), "--wait"))
    assert f"pipeline {name} is STREAMING" in created
    assert f"{db}.orders" in created

    listed = json.loads(_ok(await live.run("pipeline", "list", "--json")))
    assert name in {p["name"] for p in listed["pipelines"]}
    status = json.loads(_ok(await live.run("pipeline", "status", name, "--json")))
    assert status["tables"] == {f"{db}.orders": str(tmp_path / "lake" / db / "orders")}
    assert status["progress"][f"{db}.orders"]["snapshot_documents"] == 50

    paused = _ok(await live.run("pipeline", "pause", name, "--wait"))
    assert f"pipeline {name} is PAUSED" in paused
    resumed = _ok(await live.run("pipeline", "resume", name, "--wait"))
    assert f"pipeline {name} is STREAMING" in resumed

    unknown = _refused(await live.run("pipeline", "snapshot", name, "--collection", "nope"))
    assert "Snapshot refused (422)" in unknown and "does not capture nope" in unknown
    again = _ok(await live.run("pipeline", "snapshot", name, "-c", "orders"))
    assert "copying again: orders" in again

    patch_file = tmp_path / "patch.yaml"
    patch_file.write_text("batching:\n  max_records: 250\n")
    changed = _ok(await live.run("pipeline", "reconfigure", name, "-f", str(patch_file)))
    assert "changed: batching.max_records" in changed
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("batching:\n  max_records: 0\n")
    refused = _refused(await live.run("pipeline", "reconfigure", name, "-f", str(invalid)))
    assert "Invalid pipeline spec (422)" in refused and "batching.max_records:" in refused

    report = json.loads(_ok(await live.run("pipeline", "reconcile", name, "--wait", "--json")))
    assert report["status"] == "COMPLETED", report
    assert report["result"] and report["failure"] is None
    runs: list[dict] = []
    for _ in range(100):  # visibility lists the run shortly after it ends
        runs = json.loads(_ok(await live.run("pipeline", "reconciliations", name, "--json")))[
            "reconciliations"
        ]
        if any(r["id"] == report["id"] and r["status"] == "COMPLETED" for r in runs):
            break
        await asyncio.sleep(0.2)
    assert report["id"] in {r["id"] for r in runs}, runs
    shown = _ok(await live.run("pipeline", "reconciliations", name, report["id"]))
    assert f"reconciliation {report['id']}: COMPLETED" in shown
    # The same under `lakeward reconcile`: the report with its counts.
    listed = json.loads(_ok(await live.run("reconcile", "list", name, "--json")))
    assert report["id"] in {r["id"] for r in listed["reconciliations"]}
    detail = json.loads(_ok(await live.run("reconcile", "show", name, report["id"], "--json")))
    assert detail["result"]["summary"]["outcome"] == "passed", detail
    started = _ok(await live.run("reconcile", "run", name, "--mode", "deep"))
    assert "reconciliation" in started and "started" in started

    stopped = _ok(await live.run("pipeline", "stop", name, "--wait"))
    assert f"pipeline {name} is STOPPED" in stopped


async def test_tokens_from_the_cli_and_their_roles(live: Live, unique: str) -> None:
    made = json.loads(_ok(await live.run("token", "create", "--role", "viewer", "--name", "ci",
                                         "--json")))  # fmt: skip
    assert made["role"] == "viewer" and made["token"].startswith("lwt_")
    viewer = made["token"]
    assert viewer not in live.settings.api_tokens_file.read_text()
    listed = _ok(await live.run("token", "list"))
    assert "ci" in listed and "viewer" in listed and viewer not in listed
    taken = _refused(await live.run("token", "create", "--role", "admin", "--name", "ci"))
    assert "already named 'ci'" in taken

    _ok(await live.run("pipeline", "list", token=viewer))
    forbidden = _refused(await live.run("pipeline", "pause", f"any-{unique}", token=viewer))
    assert "Forbidden (403)" in forbidden and "needs operator" in forbidden

    assert "revoked token ci" in _ok(await live.run("token", "revoke", "ci"))
    revoked = _refused(await live.run("pipeline", "list", token=viewer))
    assert "Unauthorized (401)" in revoked and "LAKEWARD_API_TOKEN" in revoked
    missing = _refused(await live.run("pipeline", "status", f"gone-{unique}"))
    assert f"Pipeline not found (404): no pipeline named 'gone-{unique}'" in missing


async def test_an_unreachable_api_is_one_clear_line(live: Live) -> None:
    env_url = live.url
    live.url = "http://127.0.0.1:9"
    try:
        result = _refused(await live.run("pipeline", "list"))
    finally:
        live.url = env_url
    assert "cannot reach the API at http://127.0.0.1:9" in result
    assert "Traceback" not in result
