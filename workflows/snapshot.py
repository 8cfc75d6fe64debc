"""SnapshotWorkflow: copy one collection's existing documents, range by range, with a bound.

A child of the pipeline. Finished ranges are in this workflow's history, so after a crash it
resumes with the first unfinished range and never copies a finished one again.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.contracts import (
        COPY_SNAPSHOT_RANGE,
        PLAN_SNAPSHOT,
        CopySnapshotRangeInput,
        CopySnapshotRangeResult,
        PlanSnapshotInput,
        PlanSnapshotResult,
        SnapshotRange,
    )
    from workflows.contracts import (
        SNAPSHOT_WORKFLOW,
        SnapshotCollectionInput,
        SnapshotCollectionResult,
    )

__all__ = ["SnapshotWorkflow"]

RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    non_retryable_error_types=["SecretReferenceError"],
)


@workflow.defn(name=SNAPSHOT_WORKFLOW)
class SnapshotWorkflow:
    def __init__(self) -> None:
        self._planned = 0
        self._copied_ranges = 0
        self._documents = 0

    @workflow.run
    async def run(self, input: SnapshotCollectionInput) -> SnapshotCollectionResult:
        plan: PlanSnapshotResult = await workflow.execute_activity(
            PLAN_SNAPSHOT,
            PlanSnapshotInput(spec=input.spec, collection=input.collection),
            result_type=PlanSnapshotResult,
            task_queue=input.io_task_queue,
            start_to_close_timeout=timedelta(minutes=10),
            retry_policy=RETRY,
        )
        self._planned = len(plan.ranges)
        bound = asyncio.Semaphore(input.spec.snapshot.parallelism)
        result = SnapshotCollectionResult(collection=input.collection, ranges=self._planned)

        async def copy(key_range: SnapshotRange) -> None:
            async with bound:
                copied: CopySnapshotRangeResult = await workflow.execute_activity(
                    COPY_SNAPSHOT_RANGE,
                    CopySnapshotRangeInput(
                        spec=input.spec,
                        collection=input.collection,
                        range=key_range,
                        ranges=self._planned,
                    ),
                    result_type=CopySnapshotRangeResult,
                    task_queue=input.io_task_queue,
                    start_to_close_timeout=timedelta(hours=6),
                    heartbeat_timeout=timedelta(minutes=2),
                    retry_policy=RETRY,
                )
            self._copied_ranges += 1
            self._documents += copied.documents
            for partition, offset in copied.offsets.items():
                result.offsets[partition] = max(result.offsets.get(partition, -1), offset)
            if copied.seq and (not result.min_seq or copied.seq < result.min_seq):
                result.min_seq = copied.seq

        await asyncio.gather(*(copy(r) for r in plan.ranges))
        result.documents = self._documents
        return result

    @workflow.query
    def progress(self) -> dict[str, int]:
        """Ranges planned and copied, documents copied so far."""
        return {"ranges": self._planned, "copied_ranges": self._copied_ranges,
                "documents": self._documents}  # fmt: skip
