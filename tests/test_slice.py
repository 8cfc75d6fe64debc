"""The first end-to-end slice, through every layer on real servers.

API (POST /v1/pipelines) -> PipelineWorkflow on Temporal -> capture activity (change stream into
Kafka transactions) -> apply activities (Kafka into a Delta MERGE with txn versions). The lake is
checked independently: DuckDB reads the Delta table and is compared with MongoDB itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
from bson import json_util
from pydantic import SecretStr
from pymongo import MongoClient
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from api.app import create_app
from lakeward import duck
from lakeward.apply import documents
from lakeward.settings import Settings
from workers.main import build_workers
from workflows.contracts import DATA_CONVERTER

pytestmark = pytest.mark.slow
ADMIN_TOKEN = "lwt_slice-test-admin"


@pytest.fixture
async def running(
    core_stack, unique, tmp_path
) -> AsyncIterator[tuple[httpx.AsyncClient, Settings]]:
    """An in-process worker and the API app, on task queues and topics unique to the test; the
    HTTP client sends the API's admin token."""
    settings = Settings(
        temporal_address=core_stack.temporal_address,
        kafka_bootstrap=core_stack.kafka_bootstrap,
        task_queue=f"wf-{unique}",
        io_task_queue=f"io-{unique}",
        topic_prefix=f"t{unique}",
        connect_url=f"http://{core_stack.host}:{core_stack.connect_port}",
        admin_token=SecretStr(ADMIN_TOKEN),
        api_tokens_file=tmp_path / "api-tokens.json",
        audit_log=tmp_path / "audit.log",
    )
    client = await Client.connect(settings.temporal_address, data_converter=DATA_CONVERTER)
    async with serving(client, settings, ADMIN_TOKEN) as http:
        yield http, settings


@contextlib.asynccontextmanager
async def serving(
    client: Client, settings: Settings, admin_token: str
) -> AsyncIterator[httpx.AsyncClient]:
    """In-process workers for `settings` and the API app, and an HTTP client to the app that
    sends `admin_token`. Afterwards the pipelines left running on the settings' task queue are
    terminated (their capture activity would hold the worker's graceful shutdown) and the
    workers shut down."""
    executor = ThreadPoolExecutor(max_workers=settings.io_max_concurrent)
    workers, activities = build_workers(client, settings, executor)
    runs = [asyncio.create_task(w.run()) for w in workers]
    app = create_app(settings, client=client)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://lakeward",
            headers={"Authorization": f"Bearer {admin_token}"},
        ) as http:
            yield http
    finally:
        async for execution in client.list_workflows(f"TaskQueue = '{settings.task_queue}'"):
            if execution.status == WorkflowExecutionStatus.RUNNING:
                with contextlib.suppress(RPCError):
                    await client.get_workflow_handle(execution.id).terminate("test over")
        await asyncio.gather(*(w.shutdown() for w in workers))
        await asyncio.gather(*runs, return_exceptions=True)
        activities.close()
        executor.shutdown(wait=False)


async def _eventually(check: Callable[[], object], timeout: float = 90.0) -> object:
    """Poll until check() returns a truthy value; fail with the last value after timeout."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = await asyncio.to_thread(check)
        if last:
            return last
        await asyncio.sleep(0.25)
    raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")


def _lake_rows(table_uri: str) -> dict[str, dict]:
    """Independent read of the Delta table: DuckDB's delta extension from its PyPI wheel."""
    if not (Path(table_uri) / "_delta_log").exists():
        return {}
    con = duck.connect()
    # While a snapshot runs, deleted documents stay as tombstones (`_op = 'd'`).
    rows = con.execute(f"SELECT * FROM delta_scan('{table_uri}') WHERE _op <> 'd'").arrow()
    if not isinstance(rows, pa.Table):
        rows = rows.read_all()
    return dict(zip(rows.column("_id").to_pylist(), documents(rows), strict=True))


async def test_inserts_updates_and_deletes_reach_the_delta_table(
    running, core_stack, unique, tmp_path
):
    http, _ = running
    db = f"slice_{unique}"
    spec = {
        "name": f"slice-{unique}",
        "source": {"uri": core_stack.mongo_uri, "database": db, "collections": ["orders"]},
        "sink": {"uri": str(tmp_path / "lake")},
    }
    created = await http.post("/v1/pipelines", json=spec)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["name"] == spec["name"]
    assert body["state"] in ("SNAPSHOTTING", "STREAMING")  # the (empty) collection's snapshot
    table_uri = body["tables"][f"{db}.orders"]
    assert table_uri == str(tmp_path / "lake" / db / "orders")

    # Same spec again: idempotent by name.
    again = await http.post("/v1/pipelines", json=spec)
    assert again.status_code == 200

    with MongoClient(core_stack.mongo_uri) as mongo:
        orders = mongo[db].orders
        # Capture starts asynchronously; write until the first change shows up in the lake.
        orders.insert_one({"_id": "probe", "n": 0})
        await _eventually(lambda: "probe" in _lake_rows(table_uri))
        orders.insert_many([{"_id": f"o{i}", "n": i, "tags": ["a", i]} for i in range(300)])
        orders.update_many({"n": {"$lt": 50}}, {"$set": {"status": "paid"}, "$inc": {"n": 1000}})
        orders.delete_many({"n": {"$gte": 250, "$lt": 1000}})
        with mongo.start_session() as session, session.start_transaction():
            orders.insert_one({"_id": "txn-1", "n": -1}, session=session)
            orders.update_one({"_id": "o60"}, {"$set": {"status": "refunded"}}, session=session)
        expected = {doc["_id"]: doc for doc in orders.find()}

    lake = await _eventually(lambda: (r := _lake_rows(table_uri)) == expected and r)
    assert lake["o10"]["status"] == "paid" and lake["o10"]["n"] == 1010
    assert "o260" not in lake
    assert lake["o60"]["status"] == "refunded"

    status = (await http.get(f"/v1/pipelines/{spec['name']}")).json()
    assert status["state"] == "STREAMING"
    assert status["tables"] == {f"{db}.orders": table_uri}
    progress = status["progress"][f"{db}.orders"]
    assert progress["offsets"], "per-partition offsets recorded in the Delta log"
    assert progress["dead_letters"] == 0

    stopped = await http.delete(f"/v1/pipelines/{spec['name']}")
    assert stopped.status_code == 202
    deadline = time.monotonic() + 60
    while (state := (await http.get(f"/v1/pipelines/{spec['name']}")).json()["state"]) != "STOPPED":
        assert time.monotonic() < deadline, f"pipeline still {state} 60s after stop"
        await asyncio.sleep(0.25)


async def test_unknown_pipeline_is_a_problem_json_404(running) -> None:
    http, _ = running
    response = await http.get("/v1/pipelines/does-not-exist")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["title"] == "Pipeline not found"


async def test_invalid_spec_gets_field_errors_without_echoing_secrets(running) -> None:
    http, _ = running
    response = await http.post(
        "/v1/pipelines",
        json={
            "name": "Bad Name",
            "source": {"uri": "mongodb://u:hunter2@h/", "database": "d", "collections": ["c"]},
        },
    )
    assert response.status_code == 422
    fields = {e["field"] for e in response.json()["errors"]}
    assert {"name", "source.uri"} <= fields
    assert "hunter2" not in response.text


async def test_snapshot_copies_existing_documents_while_changes_stream(
    running, core_stack, unique, tmp_path
):
    """Documents that existed before the pipeline, and changes during its snapshot, converge."""
    http, _ = running
    db = f"snapshot_{unique}"
    with MongoClient(core_stack.mongo_uri) as mongo:
        orders = mongo[db].orders
        orders.insert_many([{"_id": i, "n": i, "state": "old"} for i in range(3000)])
        spec = {
            "name": f"snap-{unique}",
            "source": {"uri": core_stack.mongo_uri, "database": db, "collections": ["orders"]},
            "sink": {"uri": str(tmp_path / "lake")},
            "snapshot": {"range_docs": 500, "parallelism": 3},
        }
        created = await http.post("/v1/pipelines", json=spec)
        assert created.status_code == 201, created.text
        table_uri = created.json()["tables"][f"{db}.orders"]
        # Changes while the ranges are copied: updates, deletes, inserts, some on the same keys.
        for i in range(0, 3000, 7):
            orders.update_one({"_id": i}, {"$set": {"state": "new"}, "$inc": {"n": 10_000}})
        orders.delete_many({"_id": {"$in": list(range(1, 3000, 11))}})
        orders.insert_many([{"_id": 10_000 + i, "state": "born"} for i in range(200)])
        expected = {str(doc["_id"]): doc for doc in orders.find()}

    def lake_matches() -> bool:
        return _lake_rows(table_uri) == expected

    await _eventually(lake_matches, timeout=180)
    deadline = time.monotonic() + 60
    while True:
        status = (await http.get(f"/v1/pipelines/{spec['name']}")).json()
        progress = status["progress"][f"{db}.orders"]
        if status["state"] == "STREAMING" and progress["snapshot"] == "done":
            break
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.25)
    assert progress["snapshot_documents"] >= 2700
    assert lake_matches()
    tombstones = (
        duck.connect()
        .execute(f"SELECT count(*) FROM delta_scan('{table_uri}') WHERE _op = 'd'")
        .fetchone()
    )
    assert tombstones == (0,), "tombstones are purged once the snapshot's rows are applied"


@pytest.mark.parametrize("strategy", ["oplog", "debezium"])
async def test_other_capture_strategies_reach_the_delta_table(
    running, test_stack, core_stack, unique, tmp_path, strategy
):
    """The same pipeline through the oplog strategy and through a supervised Debezium connector."""
    if strategy == "debezium":
        test_stack.need("connect")
    http, _ = running
    db = f"{strategy}_{unique}"
    spec = {
        "name": f"{strategy}-{unique}",
        "source": {"uri": core_stack.mongo_uri, "database": db, "collections": ["orders"],
                   "capture": strategy},
        "sink": {"uri": str(tmp_path / "lake")},
        "snapshot": {"mode": "never"},
    }  # fmt: skip
    created = await http.post("/v1/pipelines", json=spec)
    assert created.status_code == 201, created.text
    table_uri = created.json()["tables"][f"{db}.orders"]
    with MongoClient(core_stack.mongo_uri) as mongo:
        orders = mongo[db].orders
        orders.insert_one({"_id": "probe"})
        await _eventually(lambda: "probe" in _lake_rows(table_uri), timeout=120)
        orders.insert_many([{"_id": i, "n": i} for i in range(200)])
        orders.update_many({"n": {"$lt": 20}}, {"$set": {"hot": True}})
        orders.delete_many({"n": {"$gte": 190}})
        expected = {str(doc["_id"]): doc for doc in orders.find()}
    await _eventually(lambda: _lake_rows(table_uri) == expected, timeout=120)
    stopped = await http.delete(f"/v1/pipelines/{spec['name']}")
    assert stopped.status_code == 202


async def _status_until(http: httpx.AsyncClient, name: str, check, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = (await http.get(f"/v1/pipelines/{name}")).json()
        if check(status):
            return status
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.25)


def _write_stale_row(table_uri: str, key: str) -> None:
    """Drift: a row for a document MongoDB does not have, with an old seq (as if its delete had
    never reached the lake)."""
    import datetime as dt

    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    now = dt.datetime.now(dt.UTC)
    row = {"_id": key, "_id_type": "string", "_op": "c",
           "_seq": "00000001" + "0" * 16, "_source_ts": now, "_kafka_topic": "drift",
           "_kafka_partition": 0, "_kafka_offset": 0, "_ingested_at": now}  # fmt: skip
    schema = pa.schema(DeltaTable(table_uri).schema().to_arrow())  # document columns null
    write_deltalake(table_uri, pa.Table.from_pylist([row], schema=schema), mode="append")


async def test_resnapshot_on_demand_removes_rows_of_documents_that_are_gone(
    running, core_stack, unique, tmp_path
):
    http, _ = running
    db = f"resnap_{unique}"
    name = f"resnap-{unique}"
    with MongoClient(core_stack.mongo_uri) as mongo:
        mongo[db].orders.insert_many([{"_id": i, "n": i} for i in range(300)])
        mongo[db].payments.insert_one({"_id": "p"})
        expected = {str(doc["_id"]): doc for doc in mongo[db].orders.find()}
    spec = {
        "name": name,
        "source": {"uri": core_stack.mongo_uri, "database": db,
                   "collections": ["orders", "payments"]},
        "sink": {"uri": str(tmp_path / "lake")},
        "snapshot": {"range_docs": 100},
    }  # fmt: skip
    created = await http.post("/v1/pipelines", json=spec)
    assert created.status_code == 201, created.text
    table_uri = created.json()["tables"][f"{db}.orders"]
    await _status_until(http, name, lambda s: s["progress"][f"{db}.orders"]["snapshot"] == "done")
    await _eventually(lambda: _lake_rows(table_uri) == expected)
    _write_stale_row(table_uri, "ghost")
    assert "ghost" in _lake_rows(table_uri)

    refused = await http.post(f"/v1/pipelines/{name}:resnapshot", json={"collections": ["x"]})
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"] == "application/problem+json"
    assert "does not capture x" in refused.json()["detail"]
    accepted = await http.post(f"/v1/pipelines/{name}:resnapshot", json={"collections": ["orders"]})
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["collections"] == ["orders"]

    status = await _status_until(
        http,
        name,
        lambda s: (
            s["progress"][f"{db}.orders"]["snapshots_started"] == 2
            and s["progress"][f"{db}.orders"]["snapshot"] == "done"
        ),
    )
    assert status["progress"][f"{db}.orders"]["rows_swept"] == 1
    assert status["progress"][f"{db}.payments"]["snapshots_started"] == 1
    assert _lake_rows(table_uri) == expected  # the ghost is gone, every document is there
    stopped = await http.delete(f"/v1/pipelines/{name}")
    assert stopped.status_code == 202
    await _status_until(http, name, lambda s: s["state"] == "STOPPED")
    ended = await http.post(f"/v1/pipelines/{name}:resnapshot")
    assert ended.status_code == 409, ended.text


async def test_a_lost_resume_point_resyncs_the_pipeline(running, core_stack, unique, tmp_path):
    """The checkpoint names a point the oplog no longer has (a fabricated token older than the
    oldest entry: the oplog's 990 MB minimum is too slow to roll over in a test), and the spec
    says `on_history_lost: resnapshot`: the pipeline starts over with a snapshot and streams."""
    from lakeward.capture import checkpoint_topic
    from lakeward.kafka.admin import ensure_compacted_topic
    from lakeward.kafka.producer import OutgoingRecord, TransactionalPublisher

    http, settings = running
    db = f"resync_{unique}"
    name = f"resync-{unique}"
    with MongoClient(core_stack.mongo_uri) as mongo:
        mongo[db].orders.insert_many([{"_id": i, "n": i} for i in range(100)])
        oldest = mongo.local["oplog.rs"].find().sort("$natural", 1).limit(1).next()["ts"]
    lost = {"_data": "82" + f"{oldest.time - 3600:08X}{1:08X}" + "2B022C0100296E5A1004" + "0" * 32}
    topic = checkpoint_topic(settings.topic_prefix)
    ensure_compacted_topic(settings.kafka_bootstrap, topic)
    publisher = TransactionalPublisher(settings.kafka_bootstrap, f"test-{unique}-fabricate")
    publisher.publish([], OutgoingRecord(topic, f"{name}/change_stream".encode(),
                                         json_util.dumps(lost).encode()))  # fmt: skip
    publisher.close()
    spec = {
        "name": name,
        "source": {"uri": core_stack.mongo_uri, "database": db, "collections": ["orders"],
                   "on_history_lost": "resnapshot"},
        "sink": {"uri": str(tmp_path / "lake")},
        "snapshot": {"mode": "never"},
    }  # fmt: skip
    created = await http.post("/v1/pipelines", json=spec)
    assert created.status_code == 201, created.text
    table_uri = created.json()["tables"][f"{db}.orders"]
    status = await _status_until(
        http, name, lambda s: s["state"] == "STREAMING" and "re-sync 1" in (s["last_error"] or "")
    )
    assert "HistoryLost" in status["last_error"]
    with MongoClient(core_stack.mongo_uri) as mongo:
        mongo[db].orders.insert_one({"_id": "after"})
        mongo[db].orders.delete_one({"_id": 0})
        expected = {str(doc["_id"]): doc for doc in mongo[db].orders.find()}
    await _eventually(lambda: _lake_rows(table_uri) == expected)
    status = (await http.get(f"/v1/pipelines/{name}")).json()
    assert status["progress"][f"{db}.orders"]["snapshots_started"] == 1
    stopped = await http.delete(f"/v1/pipelines/{name}")
    assert stopped.status_code == 202
