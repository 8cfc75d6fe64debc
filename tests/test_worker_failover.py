"""Two `lakeward worker` processes serve one pipeline; one is killed with SIGKILL while an apply
batch runs on it. The batch is retried on the other worker and the Delta table ends equal to the
MongoDB collection: the same _ids, once each, with their latest values."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest
from pymongo import MongoClient
from temporalio.client import Client

from lakeward import duck
from lakeward.settings import Settings
from tests.test_slice import _eventually, _lake_rows
from tests.test_workers import (
    apply_outcome,
    end_pipeline,
    mongo_documents,
    pipeline_spec,
    running_apply,
    start_pipeline,
    start_worker_process,
    started_applies,
    stop_worker_process,
    worker_settings,
)
from workers.main import connect

pytestmark = pytest.mark.slow


@pytest.fixture
async def client(core_stack) -> Client:
    return await connect(Settings(temporal_address=core_stack.temporal_address))


class ChangeWriter(threading.Thread):
    """Inserts, updates (the same documents again and again) and deletes until stopped."""

    def __init__(self, mongo_uri: str, database: str) -> None:
        super().__init__(daemon=True)
        self.mongo_uri, self.database = mongo_uri, database
        self.operations = 0
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        rng = random.Random(5)
        try:
            with MongoClient(self.mongo_uri) as mongo:
                orders = mongo[self.database].orders
                n = 0
                while not self.stopping.is_set():
                    orders.insert_many([{"_id": f"w{n + i}", "v": 0} for i in range(20)])
                    n += 20
                    for _ in range(10):
                        key = f"w{rng.randrange(n)}"
                        orders.update_one({"_id": key}, {"$inc": {"v": 1}, "$set": {"at": n}})
                    orders.delete_one({"_id": f"w{rng.randrange(n)}"})
                    self.operations += 31
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        assert self.error is None, self.error


def _row_counts(table_uri: str) -> tuple[int, int]:
    """(rows, distinct _ids) of the whole table, tombstones included."""
    row = (
        duck.connect()
        .execute(f"SELECT count(*), count(DISTINCT _id) FROM delta_scan('{table_uri}')")
        .fetchone()
    )
    assert row is not None
    return int(row[0]), int(row[1])


@pytest.mark.timeout(1800)
async def test_a_worker_killed_mid_batch_hands_its_batch_to_the_other(
    client, core_stack, unique, tmp_path
) -> None:
    settings = worker_settings(core_stack, unique, worker_metrics_port=0)
    processes = [start_worker_process(settings, tmp_path / f"worker-{n}.log") for n in "ab"]
    spec = pipeline_spec(core_stack, unique, tmp_path / "lake")
    db = spec.source.database
    table_uri = spec.sink.table_uri(db, "orders")
    handle = await start_pipeline(client, settings, spec)
    writer = ChangeWriter(core_stack.mongo_uri, db)
    try:
        with MongoClient(core_stack.mongo_uri) as mongo:
            mongo[db].orders.insert_one({"_id": "probe"})
        await _eventually(lambda: "probe" in _lake_rows(table_uri), timeout=600)
        writer.start()

        # Both workers take apply batches from the shared I/O task queue.
        async def identities() -> set[str]:
            return {identity for identity, _, _ in await started_applies(handle)}

        def on_both(seen: set[str]) -> bool:
            return all(any(i.startswith(p.identity_prefix) for i in seen) for p in processes)

        deadline = time.monotonic() + 600
        while not on_both(seen := await identities()):
            assert time.monotonic() < deadline, f"apply ran only on {seen}"
            await asyncio.sleep(0.5)

        # Kill -9 a worker while an apply batch is running on it.
        victim = activity_id = None
        deadline = time.monotonic() + 600
        while activity_id is None:
            assert time.monotonic() < deadline, "no apply_batch caught running"
            for process in processes:
                activity_id = await running_apply(handle, process.identity_prefix)
                if activity_id is not None:
                    victim = process
                    break
        assert victim is not None
        victim.process.kill()
        killed_at = time.time()
        victim.process.wait()
        [survivor] = [p for p in processes if p is not victim]

        # Changes go on while the batch waits out its heartbeat timeout.
        written = writer.operations
        await _eventually(lambda: writer.operations >= written + 3000, timeout=600)
        writer.stop()
        expected = mongo_documents(core_stack, db)
        await _eventually(lambda: _lake_rows(table_uri) == expected, timeout=900)

        rows, distinct = _row_counts(table_uri)
        assert rows == distinct == len(expected), (rows, distinct, len(expected))
        how, _, completed_at = await apply_outcome(client, handle, activity_id)
        assert how == "completed", how
        [(identity, attempt)] = [
            (i, a) for i, a, aid in await started_applies(handle) if aid == activity_id
        ]
        assert identity.startswith(survivor.identity_prefix) and attempt >= 2, (identity, attempt)
        retried_after = completed_at - killed_at
        print(f"\nkilled batch {activity_id} completed on the survivor {retried_after:.1f} s after "
              f"the kill; {writer.operations} changes, {len(expected)} documents")  # fmt: skip
    finally:
        if not writer.stopping.is_set() and writer.is_alive():
            writer.stopping.set()
            writer.join()
        await end_pipeline(handle)
        for process in processes:
            stop_worker_process(process)
