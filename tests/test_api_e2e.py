"""End to end through the API only, with its token: create a pipeline, write 10k changes, see them
in Delta, pause, write more, see nothing applied, resume, see all of it, stop.

tests/test_slice.py covers create, status and stop on a few hundred changes; this adds the volume
and pause/resume. It reuses the slice's `running` fixture (an in-process worker and the API app
with the admin token) and checks the lake independently: DuckDB reads the Delta table, the
`_delta_log` folder gives its version, and a read_committed consumer shows that changes made
during the pause did reach Kafka (capture runs on while apply is paused). Temporal is only observed
(which activities run), never driven.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from pymongo import InsertOne, MongoClient, UpdateOne
from temporalio.client import Client

from activities.contracts import CAPTURE_CHANGES
from tests import test_slice
from tests.test_capture_strategies import reader
from tests.test_slice import _eventually, _lake_rows

pytestmark = pytest.mark.slow
running = test_slice.running  # the slice's worker + API fixture, used here as is


def _delta_version(table_uri: str) -> int:
    """The table's latest version, from its log folder (not through the project's code)."""
    return max(int(p.stem) for p in (Path(table_uri) / "_delta_log").glob("*.json"))


async def _no_batch_in_flight(temporal: Client, workflow_id: str, timeout: float = 60) -> None:
    """Wait until the workflow runs no activity but capture (observed, not driven)."""
    deadline = time.monotonic() + timeout
    while True:
        description = await temporal.get_workflow_handle(workflow_id).describe()
        pending = {a.activity_type.name for a in description.raw_description.pending_activities}
        if pending <= {CAPTURE_CHANGES}:
            return
        assert time.monotonic() < deadline, f"activities still running: {pending}"
        await asyncio.sleep(0.1)


async def _state_becomes(http, name: str, state: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while (status := (await http.get(f"/v1/pipelines/{name}")).json())["state"] != state:
        assert time.monotonic() < deadline, f"still {status['state']}, wanted {state}: {status}"
        await asyncio.sleep(0.25)
    return status


async def test_pause_holds_back_changes_and_resume_applies_them_all(
    running, core_stack, unique, tmp_path
) -> None:
    http, settings = running
    db, name = f"e2e_{unique}", f"e2e-{unique}"
    spec = {
        "name": name,
        "source": {"uri": core_stack.mongo_uri, "database": db, "collections": ["orders"]},
        "sink": {"uri": str(tmp_path / "lake")},
    }
    created = await http.post("/v1/pipelines", json=spec)
    assert created.status_code == 201, created.text
    table_uri = created.json()["tables"][f"{db}.orders"]
    topic = f"{settings.topic_prefix}.{db}.orders"

    with (
        MongoClient(core_stack.mongo_uri) as mongo,
        reader(settings.kafka_bootstrap, topic) as kafka,
    ):
        orders = mongo[db].orders
        orders.insert_one({"_id": "probe", "n": -1})
        await _eventually(lambda: "probe" in _lake_rows(table_uri))

        # 10k changes: 7000 inserts, 2000 updates, 1000 deletes.
        orders.bulk_write([InsertOne({"_id": i, "n": i, "state": "new"}) for i in range(7000)])
        orders.bulk_write(
            [UpdateOne({"_id": i}, {"$set": {"state": "paid"}}) for i in range(0, 4000, 2)]
        )
        orders.delete_many({"_id": {"$gte": 6000}})
        expected = {str(d["_id"]): d for d in orders.find()}
        await _eventually(lambda: _lake_rows(table_uri) == expected, timeout=300)
        status = (await http.get(f"/v1/pipelines/{name}")).json()
        assert status["progress"][f"{db}.orders"]["applied"] >= 10_001

        paused = await http.post(f"/v1/pipelines/{name}:pause")
        assert paused.status_code == 202, paused.text
        await _state_becomes(http, name, "PAUSED")
        # The batch in flight at the pause may still commit (an idle one waits up to its idle
        # time for records, and takes those written meanwhile): the pause holds from its end.
        temporal = await Client.connect(settings.temporal_address)
        await _no_batch_in_flight(temporal, f"pipeline:{name}")
        version = _delta_version(table_uri)
        captured = len(kafka.poll())
        assert captured >= 10_001  # the 10k changes, the probe (and its snapshot copy, if read)

        # 2000 more changes while paused: they reach Kafka, not the table.
        orders.bulk_write([InsertOne({"_id": 10_000 + i, "n": i}) for i in range(1500)])
        orders.bulk_write([UpdateOne({"_id": i}, {"$inc": {"n": 1}}) for i in range(500)])
        await _eventually(lambda: len(kafka.poll()) >= captured + 2000, timeout=120)
        assert _delta_version(table_uri) == version
        assert _lake_rows(table_uri) == expected
        assert (await http.get(f"/v1/pipelines/{name}")).json()["state"] == "PAUSED"

        resumed = await http.post(f"/v1/pipelines/{name}:resume")
        assert resumed.status_code == 202, resumed.text
        expected = {str(d["_id"]): d for d in orders.find()}
    await _eventually(lambda: _lake_rows(table_uri) == expected, timeout=300)
    assert _delta_version(table_uri) > version
    status = await _state_becomes(http, name, "STREAMING")
    assert status["progress"][f"{db}.orders"]["lag_seconds"] is not None

    stopped = await http.delete(f"/v1/pipelines/{name}")
    assert stopped.status_code == 202, stopped.text
    await _state_becomes(http, name, "STOPPED")
