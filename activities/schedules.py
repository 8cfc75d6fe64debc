"""The pipeline's Temporal Schedule: scheduled reconciliation runs, kept in step with its spec.

The pipeline workflow calls `sync_schedule` when it starts with a schedule, after a
`reconfigure` that changes one, and when it stops, so the Schedule follows the pipeline
whichever way it was created (API, CLI, `temporal` CLI).
"""

from __future__ import annotations

from temporalio import activity
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError, RPCStatusCode

from activities.contracts import SYNC_SCHEDULE, SyncScheduleInput, SyncScheduleResult
from workflows.contracts import PIPELINE_KEY, RECONCILE_WORKFLOW, ReconcileInput

__all__ = ["ScheduleActivities", "schedule_id", "schedule_note"]


def schedule_id(pipeline: str) -> str:
    return f"reconcile:{pipeline}"


def schedule_note(cron: str) -> str:
    return f"reconcile.schedule: {cron} (managed by the pipeline; change it through its spec)"


class ScheduleActivities:
    """Holds the worker's Temporal client (the only activities that talk to Temporal itself)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    @activity.defn(name=SYNC_SCHEDULE)
    async def sync_schedule(self, input: SyncScheduleInput) -> SyncScheduleResult:
        spec = input.spec
        sid = schedule_id(spec.name)
        handle = self.client.get_schedule_handle(sid)
        if input.delete or not spec.reconcile.schedule:
            try:
                await handle.delete()
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
                return SyncScheduleResult(sid, "absent")
            return SyncScheduleResult(sid, "deleted")
        schedule = Schedule(
            action=ScheduleActionStartWorkflow(
                RECONCILE_WORKFLOW,
                ReconcileInput(
                    spec=spec,
                    io_task_queue=input.io_task_queue,
                    cpu_task_queue=input.cpu_task_queue,
                    trigger="schedule",
                ),
                # Temporal appends the scheduled time to this id for each run.
                id=f"reconcile:{spec.name}:scheduled",
                task_queue=input.task_queue,
                typed_search_attributes=TypedSearchAttributes(
                    [SearchAttributePair(PIPELINE_KEY, spec.name)]
                ),
            ),
            spec=ScheduleSpec(cron_expressions=[spec.reconcile.schedule]),
            # A run still going when the next is due: the next is skipped, never queued.
            policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
            # The server turns the cron into calendars; the note keeps what the spec said.
            state=ScheduleState(note=schedule_note(spec.reconcile.schedule)),
        )
        try:
            await self.client.create_schedule(sid, schedule)
        except ScheduleAlreadyRunningError:

            def replace(_: ScheduleUpdateInput) -> ScheduleUpdate:
                return ScheduleUpdate(schedule=schedule)

            await handle.update(replace)
            return SyncScheduleResult(sid, "updated")
        return SyncScheduleResult(sid, "created")
