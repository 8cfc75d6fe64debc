"""One rig for the whole fault suite: the test stack's servers (MongoDB, Kafka, Temporal,
SeaweedFS), two real `lakeward worker` processes, a real `lakeward api` process, and one pipeline
whose lake is on s3:// in SeaweedFS, created through the API. Scenarios run one after another on
it (one fault at a time); each leaves an `Outcome`, and the session ends by writing the summary
table to `.lakeward/faults-summary-<offset>.md` and to the terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from pymongo import MongoClient
from pymongo.errors import PyMongoError
from temporalio.client import Client, WorkflowHandle

from lakeward.settings import Settings, StackSettings
from lakeward.stack.servers_extra import LAKE_BUCKET, s3_credentials, s3_storage_options
from tests.conftest import REPO, TestStack
from tests.faults.rig import (
    SUMMARY_HEADER,
    Comparison,
    LoadWriter,
    Outcome,
    compare,
    lake_table,
    source_documents,
)
from tests.test_slice import _eventually
from tests.test_workers import (
    WorkerProcess,
    end_pipeline,
    free_port,
    start_api_process,
    start_worker_process,
    stop_worker_process,
    worker_settings,
)
from workers.main import connect

ADMIN_TOKEN = "lwt_faults-admin"
#: The workers and the API read the store's keys from these (the spec holds env: references).
KEY_ENV, SECRET_ENV = "FAULTS_S3_ACCESS_KEY_ID", "FAULTS_S3_SECRET_ACCESS_KEY"
#: Generous bounds for "it recovers": a stuck pipeline fails the test after this long.
RECOVERY_TIMEOUT_S = 300.0

OUTCOMES: list[Outcome] = []


@dataclasses.dataclass
class Pipeline:
    """A pipeline under test, its source collection and its table."""

    name: str
    database: str
    table_uri: str
    storage_options: dict[str, str] | None
    writer: LoadWriter
    mongo_uri: str
    handle: WorkflowHandle

    def source(self) -> dict[str, dict]:
        return source_documents(self.mongo_uri, self.database, "orders")

    def lake_ids(self) -> set[str]:
        rows = lake_table(self.table_uri, self.storage_options)
        return set() if rows is None else {str(i) for i in rows.column("_id").to_pylist()}

    def compare(self) -> Comparison:
        return compare(self.source(), lake_table(self.table_uri, self.storage_options))


@dataclasses.dataclass
class Rig:
    test_stack: TestStack
    stack: StackSettings
    settings: Settings
    client: Client
    workers: list[WorkerProcess]
    logs: Path
    api_port: int
    api: subprocess.Popen[bytes] | None = None
    main: Pipeline | None = None
    _spawned: int = 0

    # --- processes ---------------------------------------------------------------------------

    def start_worker(self) -> WorkerProcess:
        self._spawned += 1
        worker = start_worker_process(self.settings, self.logs / f"worker-{self._spawned}.log")
        self.workers.append(worker)
        return worker

    def start_api(self) -> None:
        env = {
            "LAKEWARD_ADMIN_TOKEN": ADMIN_TOKEN,
            "LAKEWARD_API_TOKENS_FILE": str(self.logs / "api-tokens.json"),
            "LAKEWARD_AUDIT_LOG": str(self.logs / "audit.log"),
        }
        self.api = start_api_process(self.settings, self.api_port, self.logs / "api.log", env)

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.api_port}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=30,
        )

    async def api_answers(self, name: str) -> dict:
        """Poll GET /v1/pipelines/<name> until the API answers 200; returns the body."""

        async def get() -> dict | None:
            async with self.http() as http:
                try:
                    reply = await http.get(f"/v1/pipelines/{name}")
                except httpx.TransportError:
                    return None
                return reply.json() if reply.status_code == 200 else None

        deadline = time.monotonic() + 120
        while (body := await get()) is None:
            assert time.monotonic() < deadline, "the API did not answer within 120 s"
            assert self.api is not None and self.api.poll() is None, "the API process exited"
            await asyncio.sleep(0.25)
        return body

    def server(self, name: str):
        [server] = [s for s in self.test_stack.stack.servers if s.name == name]
        return server

    def stop_server(self, name: str) -> None:
        self.test_stack.stack.down([self.server(name)])

    def start_server(self, name: str) -> None:
        self.test_stack.stack.up([self.server(name)])

    # --- pipelines ---------------------------------------------------------------------------

    async def create_pipeline(
        self, suffix: str, sink: dict[str, object], storage: dict[str, str] | None
    ) -> Pipeline:
        unique = uuid.uuid4().hex[:8]
        name, database = f"f{suffix}-{unique}", f"f{suffix}_{unique}"
        spec = {
            "name": name,
            "source": {"uri": self.stack.mongo_uri, "database": database,
                       "collections": ["orders"]},
            "sink": sink,
            # Small batches: more commits per second, so a kill lands inside one.
            "batching": {"max_records": 200},
        }  # fmt: skip
        async with self.http() as http:
            created = await http.post("/v1/pipelines", json=spec)
        assert created.status_code == 201, created.text
        table_uri = created.json()["tables"][f"{database}.orders"]
        pipeline = Pipeline(
            name=name,
            database=database,
            table_uri=table_uri,
            storage_options=storage,
            writer=LoadWriter(self.stack.mongo_uri, database, "orders"),
            mongo_uri=self.stack.mongo_uri,
            handle=self.client.get_workflow_handle(f"pipeline:{name}"),
        )
        # Capture starts asynchronously: write until the first change shows in the lake.
        await self.progressing(pipeline, "probe")
        return pipeline

    async def progressing(self, pipeline: Pipeline, key: str, timeout: float = 600) -> float:
        """Write one marker document; seconds until it is in the Delta table."""
        started = time.monotonic()
        await asyncio.to_thread(_insert_marker, pipeline, key)
        await _eventually(lambda: key in pipeline.lake_ids(), timeout=timeout)
        return time.monotonic() - started


def _insert_marker(pipeline: Pipeline, key: str) -> None:
    """Insert a marker, retrying while MongoDB is still coming back from a fault."""
    deadline = time.monotonic() + 120
    with MongoClient(pipeline.mongo_uri, serverSelectionTimeoutMS=2000) as mongo:
        while True:
            try:
                mongo[pipeline.database].orders.replace_one(
                    {"_id": key}, {"_id": key, "marker": True}, upsert=True
                )
                return
            except PyMongoError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.25)


async def run_fault(
    rig: Rig,
    fault: str,
    inject: Callable[[], Awaitable[str | None]],
    pipeline: Pipeline | None = None,
) -> Outcome:
    """Steady load, `inject()` (returns once the fault is over; may return a note), then: time
    until a change written at that moment is applied (recovery), time until the table equals
    the source once the load stops (matched), and what was lost or doubled."""
    pipeline = pipeline or rig.main
    assert pipeline is not None
    outcome = Outcome(fault)
    OUTCOMES.append(outcome)
    writer = pipeline.writer
    before = writer.changes
    writer.start()
    try:
        # The load reaches the lake before the fault: the fault hits a moving pipeline.
        await rig.progressing(pipeline, f"before-{fault}")
        injected = time.monotonic()
        outcome.note = (await inject()) or ""
        over = time.monotonic()
        outcome.fault_s = over - injected
        await rig.progressing(pipeline, f"after-{fault}", timeout=RECOVERY_TIMEOUT_S)
        outcome.recovery_s = time.monotonic() - over
        writer.pause()
        outcome.changes = writer.changes - before
        last: list[Comparison] = []

        def matches() -> bool:
            last[:] = [pipeline.compare()]
            return last[0].equal

        try:
            await _eventually(matches, timeout=RECOVERY_TIMEOUT_S)
            outcome.matched_s = time.monotonic() - over
            outcome.recovered = True
        finally:
            if last:
                outcome.lost = last[0].lost + last[0].differing
                outcome.doubled = last[0].doubled + last[0].extra
    finally:
        writer.pause()
        outcome.changes = writer.changes - before
    return outcome


def _summary() -> str:
    return "\n".join([SUMMARY_HEADER, *(o.row() for o in OUTCOMES)])


def pytest_terminal_summary(terminalreporter) -> None:
    if OUTCOMES:
        terminalreporter.write_sep("=", "fault-injection summary")
        terminalreporter.write_line(_summary())


@pytest.fixture(scope="session")
async def rig(test_stack, tmp_path_factory) -> AsyncIterator[Rig]:
    stack = test_stack.need("mongo", "kafka", "temporal", "s3")
    creds = s3_credentials(stack)
    os.environ[KEY_ENV], os.environ[SECRET_ENV] = creds.access_key_id, creds.secret_access_key
    unique = uuid.uuid4().hex[:8]
    settings = worker_settings(stack, unique, worker_metrics_port=0)
    client = await connect(Settings(temporal_address=stack.temporal_address))
    logs = tmp_path_factory.mktemp("faults")
    the_rig = Rig(test_stack, stack, settings, client, [], logs, free_port())
    the_rig.start_worker()
    the_rig.start_worker()
    the_rig.start_api()
    pipelines: list[Pipeline] = []
    try:
        storage = {
            "AWS_ENDPOINT_URL": stack.s3_endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": creds.region,
            "AWS_ACCESS_KEY_ID": f"env:{KEY_ENV}",
            "AWS_SECRET_ACCESS_KEY": f"env:{SECRET_ENV}",
        }
        await _api_up(the_rig)
        the_rig.main = await the_rig.create_pipeline(
            "s3",
            {"uri": f"s3://{LAKE_BUCKET}/faults-{unique}/lake", "storage_options": storage},
            s3_storage_options(stack),
        )
        pipelines.append(the_rig.main)
        yield the_rig
    finally:
        for pipeline in pipelines:
            pipeline.writer.pause()
            await end_pipeline(pipeline.handle)
        if the_rig.api is not None and the_rig.api.poll() is None:
            the_rig.api.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                the_rig.api.wait(30)
            if the_rig.api.poll() is None:
                the_rig.api.kill()
        for worker in the_rig.workers:
            stop_worker_process(worker)
        os.environ.pop(KEY_ENV, None)
        os.environ.pop(SECRET_ENV, None)
        summary = REPO / ".lakeward" / f"faults-summary-{stack.temporal_port}.md"
        summary.parent.mkdir(parents=True, exist_ok=True)
        summary.write_text(_summary() + "\n")


async def _api_up(rig: Rig) -> None:
    """The API process answers (an unknown pipeline is a 404, which is an answer)."""
    deadline = time.monotonic() + 120
    while True:
        with contextlib.suppress(httpx.TransportError):
            async with rig.http() as http:
                if (await http.get("/v1/pipelines")).status_code == 200:
                    return
        assert rig.api is not None and rig.api.poll() is None, (rig.logs / "api.log").read_text()
        assert time.monotonic() < deadline, "the API did not come up within 120 s"
        await asyncio.sleep(0.25)
