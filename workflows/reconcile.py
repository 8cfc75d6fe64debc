"""ReconcileWorkflow: compare a pipeline's tables with MongoDB, report, optionally repair.

Started as a child of the pipeline (its `reconcile` update) or by the pipeline's Temporal
Schedule. Per collection: plan leaves, hash both sides range by range with a bound (CPU queue),
compare range roots and leaf hashes, list keys only under mismatching leaves, verify them after
the pipeline has applied past the read, repair if asked, verify again. Finished ranges are in
history, so a crashed run resumes at the first unfinished range. At the end the report goes to
`_lakeward/reconciliations` and the summary to the pipeline (`reconciled` signal).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
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
    from workflows.contracts import (
        RECONCILE_WORKFLOW,
        ReconcileInput,
        ReconcileProgress,
        ReconcileReport,
        ReconcileSummary,
    )

__all__ = ["ReconcileWorkflow"]

RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    maximum_attempts=10,
    non_retryable_error_types=["SecretReferenceError", "UnknownCollection"],
)
#: Differences kept with their detail in the report (all are counted).
DIFFERENCES_LIMIT = 1000


@workflow.defn(name=RECONCILE_WORKFLOW)
class ReconcileWorkflow:
    def __init__(self) -> None:
        self._progress = ReconcileProgress()
        self._started = 0.0
        self._estimated = 0

    @workflow.run
    async def run(self, input: ReconcileInput) -> ReconcileReport:
        spec = input.spec
        mode = input.mode or spec.reconcile.mode.value
        repair = spec.reconcile.repair if input.repair is None else input.repair
        collections = input.collections or list(spec.source.collections)
        self._started = workflow.now().timestamp()
        summary = ReconcileSummary(
            id=workflow.info().workflow_id, outcome="passed", started_at=self._started
        )
        report = ReconcileReport(
            summary=summary, pipeline=spec.name, collections=collections, mode=mode,
            trigger=input.trigger,
        )  # fmt: skip
        try:
            for collection in collections:
                self._progress.collection = collection
                await self._reconcile(input, collection, mode, repair, report)
        except ActivityError as exc:
            summary.outcome = "failed"
            summary.error = f"{exc.cause or exc}"
        if summary.outcome != "failed":
            found = summary.missing + summary.extra + summary.changed
            if found == 0:
                summary.outcome = "passed"
            elif repair and summary.repaired == found:
                summary.outcome = "repaired"
            else:
                summary.outcome = "differences"
        summary.finished_at = workflow.now().timestamp()
        self._progress.phase = "reporting"
        try:
            written: WriteReportResult = await workflow.execute_activity(
                WRITE_RECONCILE_REPORT,
                WriteReportInput(spec=spec, report=report),
                result_type=WriteReportResult,
                task_queue=input.io_task_queue,
                start_to_close_timeout=timedelta(minutes=5),
                retry_policy=RETRY,
            )
            report.report_table = written.table_uri
        except ActivityError as exc:
            summary.error = f"{summary.error + '; ' if summary.error else ''}report: {exc.cause}"
        try:
            pipeline = workflow.get_external_workflow_handle(spec.workflow_id)
            await pipeline.signal("reconciled", summary)
        except Exception as exc:  # the pipeline is not running: the report still stands
            workflow.logger.info("pipeline %s not signalled: %s", spec.workflow_id, exc)
        self._progress.phase = "done"
        self._progress.percent = 100.0
        self._progress.eta_seconds = 0.0
        return report

    async def _reconcile(
        self,
        input: ReconcileInput,
        collection: str,
        mode: str,
        repair: bool,
        report: ReconcileReport,
    ) -> None:
        spec, summary, progress = input.spec, report.summary, self._progress
        progress.phase = "planning"
        plan: PlanReconcileResult = await workflow.execute_activity(
            PLAN_RECONCILE,
            PlanReconcileInput(spec=spec, collection=collection, mode=mode),
            result_type=PlanReconcileResult,
            task_queue=input.io_task_queue,
            start_to_close_timeout=timedelta(minutes=10),
            retry_policy=RETRY,
        )
        progress.ranges_total += len(plan.ranges)
        self._estimated += plan.estimated_documents
        report.ranges += len(plan.ranges)
        report.leaves += plan.leaves
        report.effective_modes[collection] = plan.mode
        progress.phase = "hashing"
        bound = asyncio.Semaphore(spec.reconcile.parallelism)
        mismatching: list[ReconcileLeaf] = []

        async def compare(key_range: ReconcileRange) -> None:
            request = HashRangeInput(
                spec=spec, collection=collection, version=plan.version, range=key_range,
                mode=plan.mode,
            )  # fmt: skip
            async with bound:
                source, lake = await asyncio.gather(
                    workflow.execute_activity(
                        HASH_SOURCE_RANGE, request, result_type=HashRangeResult,
                        task_queue=input.cpu_task_queue,
                        start_to_close_timeout=timedelta(hours=6),
                        heartbeat_timeout=timedelta(minutes=2), retry_policy=RETRY,
                    ),
                    workflow.execute_activity(
                        HASH_LAKE_RANGE, request, result_type=HashRangeResult,
                        task_queue=input.cpu_task_queue,
                        start_to_close_timeout=timedelta(hours=2), retry_policy=RETRY,
                    ),
                )  # fmt: skip
            summary.documents += source.documents
            progress.documents += source.documents
            progress.ranges_done += 1
            self._update_eta()
            if source.hashes == lake.hashes:  # the range's subtree matches: no descent
                return
            lowers = [key_range.lower, *key_range.uppers[:-1]]
            for lower, upper, a, b in zip(
                lowers, key_range.uppers, source.hashes, lake.hashes, strict=True
            ):
                if a != b:
                    mismatching.append(ReconcileLeaf(lower, upper))

        await asyncio.gather(*(compare(r) for r in plan.ranges))
        if not mismatching:
            return
        report.mismatching_leaves += len(mismatching)
        progress.phase = "comparing"
        found: FindCandidatesResult = await workflow.execute_activity(
            FIND_RECONCILE_CANDIDATES,
            FindCandidatesInput(
                spec=spec,
                collection=collection,
                version=plan.version,
                leaves=mismatching,
                mode=plan.mode,
            ),
            result_type=FindCandidatesResult,
            task_queue=input.cpu_task_queue,
            start_to_close_timeout=timedelta(hours=2),
            heartbeat_timeout=timedelta(minutes=1),
            retry_policy=RETRY,
        )
        if not found.keys:
            return
        if found.total > len(found.keys):
            report.truncated = True
            note = f"{collection}: {found.total - len(found.keys)} more differing keys not verified"
            summary.error = f"{summary.error}; {note}" if summary.error else note
        verified = await self._verify(input, collection, found.keys)
        summary.missing += verified.missing
        summary.extra += verified.extra
        summary.changed += verified.changed
        report.unsettled += verified.unsettled
        report.settled = report.settled and verified.settled
        room = DIFFERENCES_LIMIT - len(report.differences)
        report.differences.extend(verified.differences[: max(room, 0)])
        if len(verified.differences) > room or len(verified.keys) > len(verified.differences):
            report.truncated = True
        if not (repair and verified.keys):
            return
        progress.phase = "repairing"
        await workflow.execute_activity(
            REPAIR_RECONCILE_KEYS,
            RepairKeysInput(spec=spec, collection=collection, keys=verified.keys),
            result_type=RepairKeysResult,
            task_queue=input.io_task_queue,
            start_to_close_timeout=timedelta(minutes=30),
            retry_policy=RETRY,
        )
        after = await self._verify(input, collection, verified.keys)
        summary.repaired += len(verified.keys) - len(after.keys) - after.unsettled

    async def _verify(
        self, input: ReconcileInput, collection: str, keys: list[ReconcileKey]
    ) -> VerifyKeysResult:
        result: VerifyKeysResult = await workflow.execute_activity(
            VERIFY_RECONCILE_KEYS,
            VerifyKeysInput(spec=input.spec, collection=collection, keys=keys),
            result_type=VerifyKeysResult,
            task_queue=input.io_task_queue,
            start_to_close_timeout=timedelta(hours=1),
            heartbeat_timeout=timedelta(minutes=1),
            retry_policy=RETRY,
        )
        return result

    def _update_eta(self) -> None:
        progress = self._progress
        if progress.ranges_total:
            progress.percent = round(100.0 * progress.ranges_done / progress.ranges_total, 1)
        elapsed = workflow.now().timestamp() - self._started
        if progress.ranges_done and progress.ranges_total:
            left = progress.ranges_total - progress.ranges_done
            progress.eta_seconds = round(elapsed / progress.ranges_done * left, 1)

    @workflow.query
    def progress(self) -> ReconcileProgress:
        """Phase, percent of ranges hashed, source documents hashed, ranges done/total, ETA."""
        return self._progress
