"""A pipeline whose spec lists no collections replicates every collection of its database,
including collections created while it runs (real MongoDB, Kafka, Temporal, Delta)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from pymongo import MongoClient

from tests.test_slice import _eventually, _lake_rows, running  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow


async def _until(probe: Callable[[], Awaitable[object]], timeout: float = 120.0) -> object:
    deadline = time.monotonic() + timeout
    value = await probe()
    while not value and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        value = await probe()
    assert value, f"not seen within {timeout} s"
    return value


async def test_a_spec_without_collections_replicates_the_whole_database(
    running,  # noqa: F811
    core_stack,
    unique,
    tmp_path,
):
    http, _ = running
    db = f"whole_{unique}"
    with MongoClient(core_stack.mongo_uri) as mongo:
        mongo[db].orders.insert_many([{"_id": i, "total": i * 10} for i in range(20)])
        mongo[db].customers.insert_one({"_id": "c1", "name": "Ada"})
        # A view has no change stream: it is not replicated.
        mongo[db].create_collection("big_orders", viewOn="orders", pipeline=[])
    spec = {
        "name": f"whole-{unique}",
        "source": {"uri": core_stack.mongo_uri, "database": db, "discovery_interval_s": 1},
        "sink": {"uri": str(tmp_path / "lake")},
    }
    created = await http.post("/v1/pipelines", json=spec)
    assert created.status_code == 201, created.text
    assert created.json()["spec"]["source"]["collections"] == []
    # The same spec again is the same pipeline, although it now knows its collections.
    assert (await http.post("/v1/pipelines", json=spec)).status_code == 200

    async def tables() -> dict[str, str]:
        return (await http.get(f"/v1/pipelines/{spec['name']}")).json()["tables"]

    # The workflow lists the collections in an activity after it starts: poll for them.
    listed = await _until(tables)
    assert isinstance(listed, dict) and set(listed) == {f"{db}.customers", f"{db}.orders"}
    await _eventually(lambda: len(_lake_rows(listed[f"{db}.orders"])) == 20)
    await _eventually(lambda: set(_lake_rows(listed[f"{db}.customers"])) == {"c1"})

    with MongoClient(core_stack.mongo_uri) as mongo:
        mongo[db].payments.insert_one({"_id": "p1", "amount": 5})

    async def payments_uri() -> str | None:
        return (await tables()).get(f"{db}.payments")

    uri = await _until(payments_uri)
    assert uri == str(tmp_path / "lake" / db / "payments")
    with MongoClient(core_stack.mongo_uri) as mongo:
        mongo[db].payments.insert_one({"_id": "p2", "amount": 7})
        mongo[db].orders.delete_one({"_id": 0})
    await _eventually(lambda: set(_lake_rows(uri)) == {"p1", "p2"})
    await _eventually(lambda: len(_lake_rows(listed[f"{db}.orders"])) == 19)
    stopped = await http.delete(f"/v1/pipelines/{spec['name']}")
    assert stopped.status_code == 202
