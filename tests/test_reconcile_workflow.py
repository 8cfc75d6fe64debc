"""ReconcileWorkflow with same-name mock activities, on Temporal's time-skipping test server.

Its promises: ranges are hashed on the CPU queue within the parallelism bound, only the leaves
whose hashes differ are descended into, differences are verified (and repaired, then verified
again) before they count, a failed range is retried without hashing finished ones again, the
report is written once, and a missing pipeline does not fail the run.
"""

from __future__ import annotations

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
    FIND_RECONCILE_CANDIDATES,
    HASH_LAKE_RANGE,
    HASH_SOURCE_RANGE,
    PLAN_RECONCILE,
    REPAIR_RECONCILE_KEYS,
    VERIFY_RECONCILE_KEYS,
    WRITE_RECONCILE_REPORT,
    FindCandidatesInput,
    FindCandidatesResult,
    HashRangeInput,
    HashRangeResult,
    PlanReconcileInput,
    PlanReconcileResult,
    ReconcileKey,
    ReconcileLeaf,
    ReconcileRange,
    RepairKeysInput,
    RepairKeysResult,
    VerifyKeysInput,
    VerifyKeysResult,
    WriteReportInput,
    WriteReportResult,
)
from lakeward.stack.servers import venv_bin
from workers.main import workflow_runner
from workflows.contracts import (
    DATA_CONVERTER,
    ReconcileDifference,
    ReconcileFieldDiff,
    ReconcileInput,
    ReconcileProgress,
    ReconcileReport,
)
from workflows.reconcile import ReconcileWorkflow
from workflows.spec import PipelineSpec

RANGES = 5
LEAVES = 3  # per range
BAD = ReconcileKey("42", "number")


class FakeReconcile:
    """Both sides equal except leaf 1 of range 2, where key 42 differs."""

    def __init__(self, fail_once: set[int] = frozenset(), repairs: bool = True) -> None:
        self.fail_once = set(fail_once)
        self.hashed: Counter[tuple[str, int]] = Counter()
        self.queues: set[str] = set()
        self.candidate_leaves: list[ReconcileLeaf] = []
        self.repaired: list[ReconcileKey] = []
        self.reports: list[ReconcileReport] = []
        self.repairs = repairs

    @activity.defn(name=PLAN_RECONCILE)
    async def plan(self, input: PlanReconcileInput) -> PlanReconcileResult:
        ranges = [
            ReconcileRange(
                r, None if r == 0 else f"b{r * LEAVES - 1}",
                [f"b{r * LEAVES + i}" for i in range(LEAVES)],
            )
            for r in range(RANGES)
        ]  # fmt: skip
        ranges[-1].uppers[-1] = None
        return PlanReconcileResult(version=7, ranges=ranges, leaves=RANGES * LEAVES)

    def _hash(self, side: str, input: HashRangeInput) -> HashRangeResult:
        self.queues.add(activity.info().task_queue)
        index = input.range.index
        self.hashed[(side, index)] += 1
        if side == "source" and index in self.fail_once:
            self.fail_once.discard(index)
            raise RuntimeError("MongoDB stepped down")
        hashes = [f"h{index}.{i}" for i in range(LEAVES)]
        if side == "lake" and index == 2:
            hashes[1] = "corrupt"
        return HashRangeResult(hashes=hashes, counts=[10] * LEAVES, documents=10 * LEAVES)

    @activity.defn(name=HASH_SOURCE_RANGE)
    async def hash_source(self, input: HashRangeInput) -> HashRangeResult:
        return self._hash("source", input)

    @activity.defn(name=HASH_LAKE_RANGE)
    def hash_lake(self, input: HashRangeInput) -> HashRangeResult:
        return self._hash("lake", input)

    @activity.defn(name=FIND_RECONCILE_CANDIDATES)
    async def candidates(self, input: FindCandidatesInput) -> FindCandidatesResult:
        self.candidate_leaves.extend(input.leaves)
        return FindCandidatesResult(keys=[BAD], documents=10, total=1)

    @activity.defn(name=VERIFY_RECONCILE_KEYS)
    async def verify(self, input: VerifyKeysInput) -> VerifyKeysResult:
        if self.repaired:
            return VerifyKeysResult()
        return VerifyKeysResult(
            differences=[
                ReconcileDifference(
                    "c", BAD.key, BAD.key_type, "changed", [ReconcileFieldDiff("a", "1", "2")]
                )
            ],
            changed=1,
            keys=[BAD],
        )

    @activity.defn(name=REPAIR_RECONCILE_KEYS)
    async def repair(self, input: RepairKeysInput) -> RepairKeysResult:
        self.repaired.extend(input.keys)
        return RepairKeysResult(published=len(input.keys))

    @activity.defn(name=WRITE_RECONCILE_REPORT)
    def write(self, input: WriteReportInput) -> WriteReportResult:
        self.reports.append(input.report)
        return WriteReportResult(table_uri="lake/_lakeward/reconciliations", version=1)


@pytest.fixture(scope="module")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    async with await WorkflowEnvironment.start_time_skipping(
        data_converter=DATA_CONVERTER,
        test_server_existing_path=str(venv_bin("temporal-test-server")),
    ) as env:
        yield env


def _input(queue: str, repair: bool) -> ReconcileInput:
    spec = PipelineSpec.model_validate(
        {
            "name": "rec",
            "source": {"uri": "mongodb://127.0.0.1:1/", "database": "d", "collections": ["c"]},
            "reconcile": {"parallelism": 2, "mode": "deep"},
        }
    )
    return ReconcileInput(
        spec=spec, repair=repair, io_task_queue=f"{queue}-io", cpu_task_queue=f"{queue}-cpu"
    )


async def _run(
    client: Client, fake: FakeReconcile, repair: bool
) -> tuple[ReconcileReport, ReconcileProgress]:
    queue = f"rec-{uuid.uuid4()}"
    io = [fake.plan, fake.verify, fake.repair, fake.write]
    cpu = [fake.hash_source, fake.hash_lake, fake.candidates]
    with ThreadPoolExecutor(4) as executor:
        workers = [
            Worker(client, task_queue=queue, workflows=[ReconcileWorkflow],
                   workflow_runner=workflow_runner()),
            Worker(client, task_queue=f"{queue}-io", activities=io,
                   activity_executor=executor, graceful_shutdown_timeout=timedelta(0)),
            Worker(client, task_queue=f"{queue}-cpu", activities=cpu,
                   activity_executor=executor, graceful_shutdown_timeout=timedelta(0)),
        ]  # fmt: skip
        async with workers[0], workers[1], workers[2]:
            handle = await client.start_workflow(
                ReconcileWorkflow.run, _input(queue, repair), id=f"reconcile:{queue}",
                task_queue=queue,
            )  # fmt: skip
            report = await handle.result()
            progress = await handle.query(ReconcileWorkflow.progress)
    return report, progress


async def test_only_mismatching_leaves_are_descended_and_differences_verified(env) -> None:
    fake = FakeReconcile(fail_once={3})
    report, progress = await _run(env.client, fake, repair=False)

    assert report.summary.outcome == "differences"
    assert (report.summary.changed, report.summary.documents) == (1, RANGES * LEAVES * 10)
    assert [d.key for d in report.differences] == ["42"]
    assert fake.candidate_leaves == [ReconcileLeaf("b6", "b7")]  # leaf 1 of range 2 only
    assert report.mismatching_leaves == 1 and report.leaves == RANGES * LEAVES
    # Every range hashed once per side, the failed one retried; all on the CPU queue.
    assert fake.hashed[("source", 3)] == 2
    assert all(fake.hashed[("lake", r)] == 1 for r in range(RANGES))
    assert {q.rsplit("-", 1)[1] for q in fake.queues} == {"cpu"}
    # Reported once; no pipeline is running, and the run still ends well.
    assert len(fake.reports) == 1 and fake.reports[0].summary.id == report.summary.id
    assert progress.phase == "done" and progress.percent == 100.0
    assert progress.ranges_done == progress.ranges_total == RANGES
    assert fake.repaired == []


async def test_repair_re_emits_exactly_the_differing_keys_and_verifies_again(env) -> None:
    fake = FakeReconcile()
    report, _ = await _run(env.client, fake, repair=True)
    assert fake.repaired == [BAD]
    assert report.summary.outcome == "repaired"
    assert report.summary.repaired == 1
