"""SnapshotWorkflow with same-name mock activities, on Temporal's time-skipping test server.

The workflow's promises: every planned range is copied, at most `parallelism` at a time, and a
failed range is retried while finished ranges are never copied again (they are in the history).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from temporalio import activity
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.contracts import (
    COPY_SNAPSHOT_RANGE,
    PLAN_SNAPSHOT,
    CopySnapshotRangeInput,
    CopySnapshotRangeResult,
    PlanSnapshotInput,
    PlanSnapshotResult,
    SnapshotRange,
)
from lakeward.stack.servers import venv_bin
from workers.main import workflow_runner
from workflows.contracts import DATA_CONVERTER, SnapshotCollectionInput, SnapshotCollectionResult
from workflows.snapshot import SnapshotWorkflow
from workflows.spec import PipelineSpec

RANGES = 6


class FakeSnapshot:
    def __init__(self, fail_once: set[int]) -> None:
        self.fail_once = set(fail_once)
        self.calls: Counter[int] = Counter()
        self.finished: Counter[int] = Counter()
        self.in_flight = 0
        self.peak = 0

    @activity.defn(name=PLAN_SNAPSHOT)
    async def plan(self, input: PlanSnapshotInput) -> PlanSnapshotResult:
        return PlanSnapshotResult(ranges=[SnapshotRange(index=i) for i in range(RANGES)])

    @activity.defn(name=COPY_SNAPSHOT_RANGE)
    async def copy(self, input: CopySnapshotRangeInput) -> CopySnapshotRangeResult:
        index = input.range.index
        self.calls[index] += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            if index in self.fail_once:
                self.fail_once.discard(index)
                raise RuntimeError(f"range {index}: MongoDB stepped down")
            await asyncio.sleep(0.01)
            self.finished[index] += 1
            return CopySnapshotRangeResult(documents=100, offsets={"0": index * 10, "1": 5})
        finally:
            self.in_flight -= 1


@pytest.fixture(scope="module")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    async with await WorkflowEnvironment.start_time_skipping(
        data_converter=DATA_CONVERTER,
        test_server_existing_path=str(venv_bin("temporal-test-server")),
    ) as env:
        yield env


def _input(queue: str, parallelism: int = 2) -> SnapshotCollectionInput:
    spec = PipelineSpec.model_validate(
        {
            "name": "snap",
            "source": {"uri": "mongodb://127.0.0.1:1/", "database": "d", "collections": ["c"]},
            "snapshot": {"parallelism": parallelism},
        }
    )
    return SnapshotCollectionInput(spec=spec, collection="c", io_task_queue=queue)


def _worker(client: Client, queue: str, fake: FakeSnapshot, executor) -> Worker:
    return Worker(
        client,
        task_queue=queue,
        workflows=[SnapshotWorkflow],
        activities=[fake.plan, fake.copy],
        activity_executor=executor,
        workflow_runner=workflow_runner(),
        graceful_shutdown_timeout=timedelta(0),
    )


async def test_every_range_is_copied_within_the_bound_and_a_failed_one_is_retried(env) -> None:
    queue = f"snap-{uuid.uuid4()}"
    fake = FakeSnapshot(fail_once={2})
    with ThreadPoolExecutor(4) as executor:
        async with _worker(env.client, queue, fake, executor):
            result: SnapshotCollectionResult = await env.client.execute_workflow(
                SnapshotWorkflow.run, _input(queue, parallelism=2), id=f"snapshot:{queue}",
                task_queue=queue, result_type=SnapshotCollectionResult,
            )  # fmt: skip
    assert result.documents == RANGES * 100
    assert result.ranges == RANGES
    assert result.offsets == {"0": (RANGES - 1) * 10, "1": 5}
    assert fake.finished == Counter(range(RANGES))
    assert fake.calls[2] == 2
    assert fake.peak <= 2
