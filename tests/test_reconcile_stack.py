"""Reconciliation on the real local stack: a pipeline replicates a collection, the table is
corrupted by hand, and ReconcileWorkflow finds exactly what was done, repairs it, and reports no
false difference while the source keeps changing.

Documents: LAKEWARD_RECONCILE_TEST_DOCS (default 10000, to keep the suite short; the issue's
100k is LAKEWARD_RECONCILE_TEST_DOCS=100000, the same code).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from bson import ObjectId
from deltalake import DeltaTable, write_deltalake
from pymongo import MongoClient
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError

from lakeward.events import canonical_key
from lakeward.reconcile.report import report_uri
from lakeward.settings import Settings
from workers.main import build_workers
from workflows.contracts import (
    DATA_CONVERTER,
    PipelineStatus,
    ReconcileProgress,
    ReconcileReport,
    StartPipelineInput,
    StartReconcileInput,
    StartReconcileResult,
)
from workflows.spec import PipelineSpec

DOCS = int(os.environ.get("LAKEWARD_RECONCILE_TEST_DOCS", "10000"))
pytestmark = [pytest.mark.slow, pytest.mark.timeout(max(900, DOCS // 40))]


def _document(i: int) -> dict[str, Any]:
    # Half number _ids, half ObjectIds: leaves cross MongoDB's type brackets.
    return {
        "_id": i if i < DOCS // 2 else ObjectId(f"{i:024x}"),
        "n": i,
        "customer": {"name": f"customer {i}", "address": {"city": f"city {i % 97}", "zip": i}},
        "code": i if i % 2 else f"s{i}",  # two kinds: a variant column
        "items": [{"sku": f"sku-{i % 13}", "qty": i % 5}],
        "price": i * 1.25,
    }


async def _eventually(check: Callable[[], object], timeout: float = 180.0) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(check)
        if last:
            return last
        await asyncio.sleep(0.5)
    raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")


class Replicated:
    def __init__(
        self, client: Client, spec: PipelineSpec, mongo: MongoClient[dict[str, Any]]
    ) -> None:
        self.client = client
        self.spec = spec
        self.collection = mongo[spec.source.database]["orders"]
        self.uri = spec.sink.table_uri(spec.source.database, "orders")

    @property
    def pipeline(self) -> WorkflowHandle[Any, Any]:
        return self.client.get_workflow_handle(self.spec.workflow_id)

    def live_rows(self) -> int:
        if not (Path(self.uri) / "_delta_log").exists():
            return 0
        table = DeltaTable(self.uri).to_pyarrow_table(columns=["_op"])
        return sum(op != "d" for op in table.column("_op").to_pylist())

    async def caught_up(self, timeout: float = 300.0) -> None:
        """Snapshot done and nothing left in Kafka. The last documents were inserted in the
        second the pipeline was created, so the stream carries them too: until those events are
        applied, a row removed by hand would come back (rightly) and a test would race it."""
        table = f"{self.spec.source.database}.orders"
        deadline = time.monotonic() + timeout
        while True:
            status = await self.pipeline.query("status")
            progress = status["progress"][table]
            if progress["snapshot"] == "done" and progress["backlog"] == 0:
                return
            assert time.monotonic() < deadline, f"never caught up: {progress}"
            await asyncio.sleep(0.5)

    async def reconcile(self, **options: Any) -> tuple[ReconcileReport, ReconcileProgress]:
        started = await self.pipeline.execute_update(
            "reconcile", StartReconcileInput(**options), result_type=StartReconcileResult
        )
        run = self.client.get_workflow_handle(started.id, result_type=ReconcileReport)
        report = await run.result()
        progress = await run.query("progress", result_type=ReconcileProgress)
        return report, progress


@pytest.fixture
async def replicated(core_stack, unique, tmp_path) -> AsyncIterator[Replicated]:
    """A pipeline on its own queues and topics that has replicated DOCS documents."""
    settings = Settings(
        temporal_address=core_stack.temporal_address,
        kafka_bootstrap=core_stack.kafka_bootstrap,
        task_queue=f"wf-{unique}",
        io_task_queue=f"io-{unique}",
        cpu_task_queue=f"cpu-{unique}",
        topic_prefix=f"t{unique}",
    )
    mongo: MongoClient[dict[str, Any]] = MongoClient(core_stack.mongo_uri)
    spec = PipelineSpec.model_validate(
        {
            "name": f"r{unique}",
            "source": {"uri": core_stack.mongo_uri, "database": f"db{unique}",
                       "collections": ["orders"]},
            "sink": {"uri": str(tmp_path / "lake")},
            "reconcile": {"mode": "deep", "leaf_size": max(16, DOCS // 40), "parallelism": 2},
        }
    )  # fmt: skip
    coll = mongo[spec.source.database]["orders"]
    for start in range(0, DOCS, 5000):
        coll.insert_many([_document(i) for i in range(start, min(start + 5000, DOCS))])
    client = await Client.connect(settings.temporal_address, data_converter=DATA_CONVERTER)
    executor = ThreadPoolExecutor(max_workers=settings.io_max_concurrent)
    cpu = ThreadPoolExecutor(max_workers=2)
    workers, activities = build_workers(client, settings, executor, cpu)
    runs = [asyncio.create_task(w.run()) for w in workers]
    try:
        await client.start_workflow(
            "PipelineWorkflow",
            StartPipelineInput(
                spec=spec, topic_prefix=settings.topic_prefix,
                io_task_queue=settings.io_task_queue, cpu_task_queue=settings.cpu_task_queue,
            ),
            id=spec.workflow_id,
            task_queue=settings.task_queue,
        )  # fmt: skip
        state = Replicated(client, spec, mongo)
        await _eventually(lambda: state.live_rows() == DOCS, 300)
        await state.caught_up()
        yield state
    finally:
        async for execution in client.list_workflows(f"TaskQueue = 'wf-{unique}'"):
            if execution.status == WorkflowExecutionStatus.RUNNING:
                with contextlib.suppress(RPCError):
                    await client.get_workflow_handle(execution.id).terminate("test over")
        await asyncio.gather(*(w.shutdown() for w in workers))
        await asyncio.gather(*runs, return_exceptions=True)
        activities.close()
        executor.shutdown(wait=False)
        cpu.shutdown(wait=False)
        mongo.close()


def _corrupt(uri: str) -> dict[tuple[str, str], tuple[str, set[str]]]:
    """Corrupt the table by hand; returns key -> (class, changed paths) of what was done."""
    table = DeltaTable(uri).to_pyarrow_table()
    rows = table.to_pylist()
    by_key = {(r["_id"], r["_id_type"]): r for r in rows}

    def key(i: int) -> tuple[str, str]:
        return canonical_key(_document(i)["_id"])

    done: dict[tuple[str, str], tuple[str, set[str]]] = {}
    for i in (3, DOCS // 2 + 7, DOCS - 1):  # deleted rows: missing in the lake
        rows.remove(by_key[key(i)])
        done[key(i)] = ("missing", set())
    for new_id in (10**9, ObjectId("f" * 24)):  # added rows: extra in the lake
        extra = dict(by_key[key(11)])
        extra["_id"], extra["_id_type"] = canonical_key(new_id)
        rows.append(extra)
        done[canonical_key(new_id)] = ("extra", set())
    nested = by_key[key(21)]  # one nested field changed
    nested["customer"] = {
        **nested["customer"],
        "address": {**nested["customer"]["address"], "city": "Atlantis"},
    }
    done[key(21)] = ("changed", {"customer.address.city"})
    typed = by_key[key(33)]  # a type changed: the int 33 stored as the string "33"
    assert typed["code"]["%int32"] == 33
    typed["code"] = {**typed["code"], "%int32": None, "%string": "33"}
    done[key(33)] = ("changed", {"code"})
    value = by_key[key(DOCS // 2 + 40)]  # a value corrupted in place
    value["price"] = value["price"] + 0.01
    done[key(DOCS // 2 + 40)] = ("changed", {"price"})
    write_deltalake(uri, pa.Table.from_pylist(rows, schema=table.schema), mode="overwrite")
    return done


async def test_every_corruption_is_found_and_repair_makes_the_table_equal(
    replicated: Replicated,
) -> None:
    clean, progress = await replicated.reconcile(mode="deep")
    assert clean.summary.outcome == "passed", clean
    assert clean.summary.documents == DOCS
    assert clean.differences == [] and clean.mismatching_leaves == 0
    assert (progress.phase, progress.percent, progress.ranges_done) == (
        "done", 100.0, progress.ranges_total,
    )  # fmt: skip

    # fast: the source's raw BSON hashes against the `_hash` apply wrote, every one equal.
    fast_clean, _ = await replicated.reconcile(mode="fast")
    assert fast_clean.effective_modes == {"orders": "fast"}
    assert fast_clean.summary.outcome == "passed", fast_clean
    assert fast_clean.summary.documents == DOCS and fast_clean.mismatching_leaves == 0

    done = await asyncio.to_thread(_corrupt, replicated.uri)
    # fast trusts `_hash`: it finds rows deleted and added, not values corrupted in the data
    # columns under an intact hash...
    fast, _ = await replicated.reconcile(mode="fast")
    assert {(d.key, d.key_type): d.kind for d in fast.differences} == {
        key: kind for key, (kind, _) in done.items() if kind != "changed"
    }
    # ...deep recomputes from the data columns and finds every one, with its class and field.
    found, _ = await replicated.reconcile(mode="deep")
    assert found.effective_modes == {"orders": "deep"}

    assert found.summary.outcome == "differences"
    reported = {
        (d.key, d.key_type): (d.kind, {f.path for f in d.fields}) for d in found.differences
    }
    assert reported == done
    assert (found.summary.missing, found.summary.extra, found.summary.changed) == (3, 2, 3)
    code = next(d for d in found.differences if d.kind == "changed" and d.fields[0].path == "code")
    assert (code.fields[0].source, code.fields[0].lake) == ('{"$numberInt": "33"}', '"33"')
    # Only the mismatching leaves were descended into, not the whole collection.
    assert 0 < found.mismatching_leaves <= len(done)
    assert found.mismatching_leaves < found.leaves

    # The pipeline heard of it, and the report table holds both runs.
    status = await replicated.pipeline.query("status", result_type=PipelineStatus)
    assert status.last_reconciliation is not None
    assert status.last_reconciliation.id == found.summary.id
    reports = DeltaTable(report_uri(replicated.spec.sink.uri)).to_pyarrow_table().to_pylist()
    assert {r["id"]: r["outcome"] for r in reports} == {
        clean.summary.id: "passed",
        fast_clean.summary.id: "passed",
        fast.summary.id: "differences",
        found.summary.id: "differences",
    }

    repaired, _ = await replicated.reconcile(mode="deep", repair=True)
    assert repaired.summary.outcome == "repaired", repaired
    assert repaired.summary.repaired == len(done)
    again, _ = await replicated.reconcile(mode="deep")
    assert again.summary.outcome == "passed", again
    # The repaired rows came through apply, with their `_hash`: fast agrees.
    fast_again, _ = await replicated.reconcile(mode="fast")
    assert (fast_again.summary.outcome, fast_again.effective_modes) == (
        "passed",
        {"orders": "fast"},
    )

    # Independently of the reconciler: the table's keys and the corrupted values are right.
    table = DeltaTable(replicated.uri).to_pyarrow_table().to_pylist()
    live = {(r["_id"], r["_id_type"]): r for r in table if r["_op"] != "d"}
    source = {canonical_key(d["_id"]): d for d in replicated.collection.find()}
    assert set(live) == set(source)
    for key, (kind, _) in done.items():
        if kind == "changed":
            row, doc = live[key], source[key]
            assert row["customer"]["address"]["city"] == doc["customer"]["address"]["city"]
            assert row["price"] == doc["price"]
            assert (row["code"]["%int32"], row["code"]["%string"]) == (
                (doc["code"], None) if isinstance(doc["code"], int) else (None, doc["code"])
            )


async def test_steady_writes_are_not_differences(replicated: Replicated) -> None:
    stop = asyncio.Event()
    written = 0

    async def write() -> None:
        nonlocal written
        rnd = random.Random(7)
        fresh = DOCS
        while not stop.is_set():
            i = rnd.randrange(DOCS)
            doc_id = _document(i)["_id"]
            choice = rnd.random()
            if choice < 0.6:
                await asyncio.to_thread(
                    replicated.collection.update_one,
                    {"_id": doc_id},
                    {"$set": {"customer.address.city": f"moved {written}"}, "$inc": {"n": 1}},
                )
            elif choice < 0.8:
                await asyncio.to_thread(replicated.collection.insert_one, _document(fresh))
                fresh += 1
            else:
                await asyncio.to_thread(replicated.collection.delete_one, {"_id": doc_id})
            written += 1
            await asyncio.sleep(0.01)

    writer = asyncio.create_task(write())
    try:
        report, _ = await replicated.reconcile(mode="deep")
    finally:
        stop.set()
        await writer
    assert written > 50
    assert report.summary.outcome == "passed", report
    assert report.differences == []
