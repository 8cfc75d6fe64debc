"""Reconciliation activities through ActivityEnvironment, on a real MongoDB (no pipeline)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from pymongo import MongoClient
from temporalio.testing import ActivityEnvironment

from activities.contracts import HashRangeInput, PlanReconcileInput
from activities.reconcile import ReconcileActivities
from lakeward.settings import Settings
from workflows.spec import PipelineSpec

pytestmark = pytest.mark.slow


async def test_a_retried_source_range_resumes_after_its_heartbeated_leaves(
    mongo, unique, tmp_path
) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(mongo.mongo_uri)
    database = f"db{unique}"
    client[database]["c"].insert_many([{"_id": i, "v": i * 2} for i in range(400)])
    spec = PipelineSpec.model_validate(
        {
            "name": f"r{unique}",
            "source": {"uri": mongo.mongo_uri, "database": database, "collections": ["c"]},
            "sink": {"uri": str(tmp_path / "lake")},
            "reconcile": {"leaf_size": 20},
        }
    )
    activities = ReconcileActivities(Settings())
    try:
        plan = await ActivityEnvironment().run(
            activities.plan_reconcile, PlanReconcileInput(spec=spec, collection="c", mode="fast")
        )
        # No table yet: fast can run (every row apply writes will have `_hash`).
        assert plan.version is None and plan.mode == "fast"
        first = plan.ranges[0]
        assert len(first.uppers) > 2
        request = HashRangeInput(spec=spec, collection="c", version=None, range=first)

        beats: list[Any] = []
        fresh = ActivityEnvironment()
        fresh.on_heartbeat = lambda *details: beats.append(details[0])
        whole = await fresh.run(activities.hash_source_range, request)
        assert len(beats) == len(first.uppers)  # one heartbeat per finished leaf
        assert whole.documents == sum(whole.counts) > 0

        # A retry after two leaves: those come from the heartbeat, the rest are read again.
        retry = ActivityEnvironment()
        done = [[7, "from the heartbeat"], beats[1][1]]
        retry.info = dataclasses.replace(retry.info, heartbeat_details=[done])
        resumed = await retry.run(activities.hash_source_range, request)
        assert resumed.hashes[:2] == ["from the heartbeat", whole.hashes[1]]
        assert resumed.counts[0] == 7
        assert resumed.hashes[2:] == whole.hashes[2:]
    finally:
        client.drop_database(database)
        client.close()
