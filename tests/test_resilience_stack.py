"""Resilience on real servers: a stopped mongod opens its breaker and the pipeline catches up
after the restart with nothing lost; the per-pipeline bulkhead keeps a stuck pipeline from
taking the whole I/O pool of a worker; readers share the worker's MongoDB clients."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from pymongo import MongoClient
from temporalio import activity, workflow
from temporalio.client import Client, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.contracts import CAPTURE_CHANGES
from activities.resilience import ResilienceInterceptor
from lakeward.mongo.admin import ensure_replica_set, ping
from lakeward.mongo.clients import shared_clients
from lakeward.mongo.reconcile import SourceReader
from lakeward.mongo.snapshot import SnapshotReader
from lakeward.resilience import Bulkhead
from lakeward.settings import Settings
from lakeward.stack.servers import MongoServer
from tests.test_slice import _eventually, _lake_rows
from tests.test_workers import (
    end_pipeline,
    free_port,
    in_process_workers,
    start_pipeline,
    worker_settings,
)
from workers.main import connect
from workflows.spec import PipelineSpec


@pytest.fixture
async def client(kafka, temporal) -> AsyncIterator[Client]:
    yield await connect(Settings(temporal_address=temporal.temporal_address))


class PrivateReplicaSet:
    """A single-node replica set of the test's own, so stopping it disturbs no other test;
    started and stopped through its process handle, restarted on the same port and data."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        (root / "data").mkdir(parents=True)

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?replicaSet=rs0"

    def start(self) -> None:
        log = (self.root / "mongod.log").open("ab")
        self.process = subprocess.Popen(
            [str(MongoServer.binary()), "--replSet", "rs0", "--bind_ip", "127.0.0.1",
             "--port", str(self.port), "--dbpath", str(self.root / "data"),
             "--wiredTigerCacheSizeGB", "0.25", "--oplogSize", "128"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 60
        while not ping("127.0.0.1", self.port):
            assert self.process.poll() is None, (self.root / "mongod.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "private mongod did not answer within 60s"
            time.sleep(0.1)
        ensure_replica_set("127.0.0.1", self.port)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)


@contextlib.contextmanager
def private_replica_set(root: Path) -> Iterator[PrivateReplicaSet]:
    mongod = PrivateReplicaSet(root)
    mongod.start()
    try:
        yield mongod
    finally:
        mongod.stop()


def breaker_state(dependency: str) -> float | None:
    return REGISTRY.get_sample_value("lakeward_circuit_breaker_state", {"dependency": dependency})


def transitions(dependency: str, state: str) -> float:
    value = REGISTRY.get_sample_value(
        "lakeward_circuit_breaker_transitions_total", {"dependency": dependency, "state": state}
    )
    return value or 0.0


async def capture_failure(client: Client, handle: WorkflowHandle) -> tuple[str, str] | None:
    """(type, message) of the capture activity's last failed attempt, if it has one now
    (history keeps failure messages encrypted: the client's codec decodes them)."""
    description = await handle.describe()
    for pending in description.raw_description.pending_activities:
        if pending.activity_type.name == CAPTURE_CHANGES and pending.HasField("last_failure"):
            error = await client.data_converter.decode_failure(pending.last_failure)
            if isinstance(error, ApplicationError):
                return error.type or "", error.message
            return type(error).__name__, str(error)
    return None


def source_documents(uri: str, db: str) -> dict[str, dict]:
    with MongoClient(uri) as mongo:
        return {str(doc["_id"]): doc for doc in mongo[db].orders.find()}


@pytest.mark.timeout(600)
async def test_a_stopped_mongod_opens_the_breaker_and_the_pipeline_catches_up_after_restart(
    client, kafka, unique, tmp_path
) -> None:
    # Two failed capture attempts open the breaker; 20 s open leaves the fail-fast phase long
    # enough to see; the probe then finds mongod back.
    settings = worker_settings(
        kafka, unique, breaker_failure_threshold=2, breaker_open_s=20.0, worker_metrics_port=0
    )
    db = f"r_{unique}"
    with private_replica_set(tmp_path / "mongo") as mongod:
        spec = PipelineSpec.model_validate(
            {
                "name": f"r-{unique}",
                "source": {"uri": mongod.uri, "database": db, "collections": ["orders"]},
                "sink": {"uri": str(tmp_path / "lake")},
            }
        )
        table_uri = spec.sink.table_uri(db, "orders")
        assert breaker_state("mongodb") in (None, 0)
        opened, closed = transitions("mongodb", "open"), transitions("mongodb", "closed")
        async with in_process_workers(client, settings):
            handle = await start_pipeline(client, settings, spec)
            try:
                with MongoClient(mongod.uri) as mongo:
                    mongo[db].orders.insert_many([{"_id": f"a{i}", "v": i} for i in range(10)])
                await _eventually(lambda: len(_lake_rows(table_uri)) == 10, timeout=180)

                # Changes made just before the outage may or may not be captured yet.
                with MongoClient(mongod.uri) as mongo:
                    mongo[db].orders.insert_many([{"_id": f"b{i}", "v": i} for i in range(10)])
                    mongo[db].orders.update_one({"_id": "a0"}, {"$set": {"v": 100}})
                await asyncio.to_thread(mongod.stop)

                await _eventually(lambda: breaker_state("mongodb") == 2, timeout=180)
                assert transitions("mongodb", "open") > opened

                # While open, capture attempts fail at once with a retryable error naming the
                # source cluster, instead of each waiting out the driver's server selection.
                async def failing_fast() -> tuple[str, str] | None:
                    failure = await capture_failure(client, handle)
                    return failure if failure and failure[0] == "CircuitOpen" else None

                _, message = await _poll(failing_fast, timeout=60)
                assert f"mongodb (127.0.0.1:{mongod.port}) circuit breaker is open" in message
                assert "2 failures in a row" in message or "the probe failed" in message

                await asyncio.to_thread(mongod.start)
                # The probe after the open period finds it back: half-open, then closed.
                await _eventually(lambda: breaker_state("mongodb") == 0, timeout=180)
                assert transitions("mongodb", "closed") > closed

                with MongoClient(mongod.uri) as mongo:
                    mongo[db].orders.insert_many([{"_id": f"c{i}", "v": i} for i in range(10)])
                    mongo[db].orders.update_one({"_id": "b3"}, {"$set": {"v": 33}})
                    mongo[db].orders.delete_one({"_id": "a1"})
                expected = await asyncio.to_thread(source_documents, mongod.uri, db)
                assert len(expected) == 29
                # Independent of Lakeward's reconciler: DuckDB reads the Delta table.
                await _eventually(lambda: _lake_rows(table_uri) == expected, timeout=180)
            finally:
                await end_pipeline(handle)


async def _poll(check, timeout: float):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := await check():
            return found
        await asyncio.sleep(0.25)
    raise AssertionError(f"condition not met within {timeout}s")


# --- bulkhead -----------------------------------------------------------------------------------


@dataclasses.dataclass
class PipelineName:
    name: str


@dataclasses.dataclass
class WorkInput:
    """Shaped like a pipeline activity's input: the bulkhead reads `spec.name`."""

    spec: PipelineName
    index: int


_release = threading.Event()


@activity.defn(name="test_blocked_work")
def _blocked_work(input: WorkInput) -> int:
    """A pipeline's activity stuck on its dependency until the test lets it go."""
    while not _release.wait(0.2):
        activity.heartbeat()
    return input.index


@activity.defn(name="test_quick_work")
def _quick_work(input: WorkInput) -> int:
    return input.index


@workflow.defn(name="test-bulkhead")
class _BulkheadWorkflow:
    @workflow.run
    async def run(self, pipeline: str, activity_name: str, count: int, queue: str) -> list[int]:
        return list(
            await asyncio.gather(
                *(
                    workflow.execute_activity(
                        activity_name,
                        WorkInput(PipelineName(pipeline), i),
                        task_queue=queue,
                        start_to_close_timeout=timedelta(minutes=5),
                        heartbeat_timeout=timedelta(seconds=30),
                    )
                    for i in range(count)
                )
            )
        )


@pytest.mark.timeout(300)
async def test_a_stuck_pipeline_cannot_take_the_pool_from_the_others(client, unique) -> None:
    stuck, healthy = f"stuck-{unique}", f"healthy-{unique}"
    rejected_before = (
        REGISTRY.get_sample_value("lakeward_bulkhead_rejections_total", {"pipeline": stuck}) or 0.0
    )
    _release.clear()
    pool = 4
    io = ThreadPoolExecutor(pool)
    try:
        async with contextlib.AsyncExitStack() as running:
            # The I/O worker as build_workers makes it: a bounded pool and the bulkhead (2 of 4).
            activities = Worker(
                client, task_queue=f"io-{unique}", activities=[_blocked_work, _quick_work],
                activity_executor=io, max_concurrent_activities=pool,
                interceptors=[ResilienceInterceptor(Bulkhead(2))],
            )  # fmt: skip
            workflows = Worker(client, task_queue=f"wf-{unique}", workflows=[_BulkheadWorkflow],
                               workflow_runner=UnsandboxedWorkflowRunner())  # fmt: skip
            for worker in (activities, workflows):
                await running.enter_async_context(worker)
            # Without the cap, these four would hold every slot of the pool until released.
            blocked = await client.start_workflow(
                _BulkheadWorkflow.run, args=[stuck, "test_blocked_work", 4, f"io-{unique}"],
                id=f"stuck-{unique}", task_queue=f"wf-{unique}",
            )  # fmt: skip

            def stuck_in_flight() -> float | None:
                return REGISTRY.get_sample_value("lakeward_pipeline_in_flight", {"pipeline": stuck})

            await _eventually(lambda: stuck_in_flight() == 2, timeout=60)
            done = await client.execute_workflow(
                _BulkheadWorkflow.run, args=[healthy, "test_quick_work", 6, f"io-{unique}"],
                id=f"healthy-{unique}", task_queue=f"wf-{unique}",
                execution_timeout=timedelta(seconds=120),
            )  # fmt: skip
            assert sorted(done) == list(range(6))
            # The stuck pipeline's other activities were refused, retryably, and counted.
            rejected = REGISTRY.get_sample_value(
                "lakeward_bulkhead_rejections_total", {"pipeline": stuck}
            )
            assert rejected is not None and rejected > rejected_before
            assert stuck_in_flight() == 2

            _release.set()
            assert sorted(await blocked.result()) == [0, 1, 2, 3]
            assert stuck_in_flight() == 0
    finally:
        _release.set()
        io.shutdown()


# --- shared MongoDB clients ----------------------------------------------------------------------


async def test_readers_share_the_workers_mongodb_client_and_its_pool(mongo, unique) -> None:
    db = f"p_{unique}"
    with MongoClient(mongo.mongo_uri) as sync:
        sync[db].orders.insert_many([{"_id": i} for i in range(5)])
    async with shared_clients(min_pool_size=5, max_pool_size=50) as cache:
        async with SnapshotReader(mongo.mongo_uri, db, "orders") as first:
            await first.majority_time()
            client = first._client
        async with SourceReader(mongo.mongo_uri, db, "orders") as second:
            assert await second.estimated_count() == 5
            assert second._client is client  # the same pool, still open
        assert len(cache) == 1
        pool = client.options.pool_options
        assert (pool.min_pool_size, pool.max_pool_size) == (5, 50)
    # Outside a worker's lifetime a reader has a client of its own, closed after its block.
    async with SnapshotReader(mongo.mongo_uri, db, "orders") as own:
        assert own._client is not client
        assert await own.majority_time()
