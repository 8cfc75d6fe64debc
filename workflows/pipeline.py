"""PipelineWorkflow: one long-running entity per pipeline (workflow id `pipeline:<name>`).

Capture runs as one long activity that heartbeats; apply runs one activity per micro-batch and
per collection. Signals pause, resume and stop; the `resnapshot` update copies collections again;
the `status` query reads the state.

Snapshots (docs/snapshot.md): at creation unless `snapshot.mode` is `never`; again for the
collections asked for (`resnapshot`); for every collection on each resume when the mode is
`always`; and, as a re-sync, when capture finds its resume point gone from the oplog and the spec
allows it (`on_history_lost: resnapshot`, or mode `when_needed`/`always`). Once a snapshot's rows
are applied, rows older than its read point are removed: documents deleted without a change the
lake saw.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.common import (
    RetryPolicy,
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
)
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError
from temporalio.workflow import ChildWorkflowHandle, ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.contracts import (
        APPLY_BATCH,
        APPLY_DEAD_LETTERS,
        CAPTURE_CHANGES,
        DISCOVER_COLLECTIONS,
        MAINTAIN_TABLE,
        RELEASE_CAPTURE,
        RESET_CAPTURE,
        SYNC_SCHEDULE,
        ApplyBatchInput,
        ApplyBatchResult,
        ApplyDeadLettersInput,
        ApplyDeadLettersResult,
        CaptureChangesInput,
        CaptureChangesResult,
        DiscoverCollectionsInput,
        DiscoverCollectionsResult,
        MaintainTableInput,
        MaintainTableResult,
        ReleaseCaptureInput,
        ReleaseCaptureResult,
        ResetCaptureInput,
        ResetCaptureResult,
        SyncScheduleInput,
        SyncScheduleResult,
    )
    from workflows.contracts import (
        PIPELINE_KEY,
        PIPELINE_WORKFLOW,
        RECONCILE_WORKFLOW,
        SNAPSHOT_WORKFLOW,
        SOURCE_KEY,
        STATE_KEY,
        LifecycleState,
        PipelineState,
        PipelineStatus,
        ReconcileInput,
        ReconcileSummary,
        ReconfigurePipelineInput,
        ReconfigurePipelineResult,
        SnapshotCollectionInput,
        SnapshotCollectionResult,
        StartPipelineInput,
        StartReconcileInput,
        StartReconcileResult,
        TableProgress,
    )
    from workflows.spec import (
        CaptureStrategy,
        HistoryLostPolicy,
        PipelineSpec,
        ReconcileMode,
        SnapshotMode,
    )

__all__ = ["PIPELINE_KEY", "SOURCE_KEY", "STATE_KEY", "PipelineWorkflow", "search_attributes"]


CAPTURE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    non_retryable_error_types=[
        "CaptureSourceError",
        "HistoryLost",
        "SecretReferenceError",
        "ConnectorConfigError",
        "ConnectorFailedError",
    ],
)
RELEASE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=10,
)
#: Capture's dead letters (changes too large to publish) move to the dead-letter table every
#: this many apply rounds (and at most a round late after a stop).
DEAD_LETTER_ROUNDS = 10
#: After a stop or a pause, how long the batch in flight may take to commit before it is cancelled.
BATCH_GRACE = timedelta(seconds=30)
#: Maintenance is upkeep: a few tries, then the pipeline goes on and tries at the next interval.
MAINTENANCE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    maximum_attempts=3,
    non_retryable_error_types=["UnknownCollection", "NestedTableError", "SecretReferenceError"],
)
APPLY_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
)
APPLY_HEARTBEAT = timedelta(seconds=20)
SCHEDULE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    maximum_attempts=10,
)
DISCOVERY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    non_retryable_error_types=["CaptureSourceError", "SecretReferenceError"],
)
#: What a running pipeline may not change: another source or sink is another pipeline.
FIXED_SOURCE_FIELDS = ("uri", "database", "capture")


def _changed_paths(old: object, new: object, prefix: str = "") -> list[str]:
    """Dotted paths of the fields that differ between two specs (lists compared whole)."""
    old_fields = old.model_dump() if hasattr(old, "model_dump") else old
    new_fields = new.model_dump() if hasattr(new, "model_dump") else new
    if not isinstance(old_fields, dict) or not isinstance(new_fields, dict):
        return [prefix] if old_fields != new_fields else []
    changed: list[str] = []
    for key in sorted(set(old_fields) | set(new_fields)):
        path = f"{prefix}.{key}" if prefix else key
        changed += _changed_paths(old_fields.get(key), new_fields.get(key), path)
    return changed


def _search_attribute_values(state: PipelineState) -> list[tuple[SearchAttributeKey[str], str]]:
    spec = state.spec
    return [
        (PIPELINE_KEY, spec.name),
        (STATE_KEY, state.state.value),
        (SOURCE_KEY, f"{spec.source.database}:{spec.source.capture.value}"),
    ]


def search_attributes(state: PipelineState) -> TypedSearchAttributes:
    """What the API and the Web UI list and filter pipelines by, set when a pipeline starts."""
    return TypedSearchAttributes(
        [SearchAttributePair(key, value) for key, value in _search_attribute_values(state)]
    )


def _upsert_search_attributes(state: PipelineState) -> None:
    workflow.upsert_search_attributes(
        [key.value_set(value) for key, value in _search_attribute_values(state)]
    )


@workflow.defn(name=PIPELINE_WORKFLOW)
class PipelineWorkflow:
    @workflow.init
    def __init__(self, input: StartPipelineInput) -> None:
        if input.carried is not None:
            self._state = input.carried
        else:
            spec = input.spec
            self._state = PipelineState(
                spec=spec,
                topic_prefix=input.topic_prefix,
                io_task_queue=input.io_task_queue,
                cpu_task_queue=input.cpu_task_queue,
                created_at=workflow.now().timestamp(),
                tables={
                    table: TableProgress(
                        table=table,
                        uri=uri,
                        topic=spec.topic(input.topic_prefix, table.split(".", 1)[1]),
                    )
                    for table, uri in spec.tables().items()
                },
            )
        self._stop_requested = False
        #: A pause signalled while the pipeline was still CREATED.
        self._paused_before_start = False
        #: Apply batches running now (a pause takes effect once they have ended).
        self._batches_in_flight = 0
        #: Collections to snapshot again (the `resnapshot` update, mode `always` on resume).
        self._requested: set[str] = set()
        self._capture: asyncio.Task[CaptureChangesResult] | None = None
        #: Tables ("<db>.<collection>") to copy again as soon as their running snapshot ends.
        self._after_current: set[str] = set()
        self._rounds = 0
        #: Set by `reconfigure` when the source changed: capture restarts with the new spec.
        self._restart_capture = False
        #: Set when the reconciliation schedule must be created, updated or deleted.
        self._schedule_changed = bool(input.carried is None and input.spec.reconcile.schedule)

    def _capture_ended(self) -> bool:
        return self._capture is not None and self._capture.done()

    @workflow.run
    async def run(self, input: StartPipelineInput) -> PipelineState:
        if self._state.state == LifecycleState.CREATED and not self._state.spec.source.collections:
            # A whole-database pipeline: from here on its spec lists what it replicates.
            self._state.all_collections = True
            try:
                found = await self._discover()
            except ActivityError as error:
                self._fail(error)
                return self._state
            self._add_collections(found, snapshot=False)
        if self._state.state == LifecycleState.CREATED:
            # Histories from before the snapshot stage existed replay without it.
            if workflow.patched("snapshot-stage") and self._wants_snapshot():
                for table in self._state.tables.values():
                    table.snapshot = "running"
                    table.snapshots_started += 1
                self._set_state(LifecycleState.SNAPSHOTTING)
            else:
                self._set_state(LifecycleState.STREAMING)
            # A pause that came before the first task (signal-with-start, a reset to the start,
            # during discovery) holds from the start; older histories dropped it.
            if self._paused_before_start and workflow.patched("pause-before-start"):
                self._set_state(LifecycleState.PAUSED)
        else:
            _upsert_search_attributes(self._state)
        capture = self._capture = self._start_capture()
        # The stream's start point (the pipeline's creation) was fixed before any range is read.
        snapshots = {
            table.table: await self._start_snapshot(table)
            for table in self._state.tables.values()
            if table.snapshot == "running"
        }
        while not self._stop_requested:
            await workflow.wait_condition(
                lambda: (
                    self._state.state != LifecycleState.PAUSED
                    or self._stop_requested
                    or self._capture_ended()
                    or self._restart_capture
                    or self._schedule_changed
                )
            )
            if self._stop_requested:
                break
            if self._schedule_changed:
                self._schedule_changed = False
                await self._sync_schedule()
            if self._restart_capture:
                self._restart_capture = False
                await self._stop_capture(capture)
                capture = self._capture = self._start_capture()
                continue
            if capture.done():
                if not self._resyncs_after(capture):
                    self._fail_from(capture)
                    return self._state  # capture has ended
                restarted = await self._resync(capture, snapshots)
                if restarted is None:
                    return self._state
                capture = self._capture = restarted
                continue
            if self._state.state == LifecycleState.PAUSED:
                continue  # woken by a reconfiguration: still paused
            if self._state.all_collections and await self._found_new_collections():
                continue  # capture restarts with them first
            await self._start_requested_snapshots(snapshots)
            if not self._state.tables:
                # Nothing to apply yet: wait for a collection to appear, not in a busy loop.
                await workflow.wait_condition(
                    lambda: self._stop_requested or self._reconfigured(),
                    timeout=self._state.spec.source.discovery_interval_s,
                )
                continue
            failure = await self._apply_round()
            if failure is not None:
                self._fail(failure)
                await self._stop_capture(capture)
                return self._state
            self._collect_snapshots(snapshots)
            if (
                workflow.info().is_continue_as_new_suggested()
                and not snapshots
                and not self._requested
            ):
                break
        # Not in a `finally`: a workflow evicted from the worker's cache is torn down by closing
        # its coroutine, and awaiting there would be "coroutine ignored GeneratorExit".
        await self._stop_capture(capture)
        if self._stop_requested:
            if workflow.patched("release-capture-on-stop"):
                # After capture ended: a Debezium connector is deleted (its offsets stay in
                # Connect, so a pipeline created again resumes where this one stopped).
                try:
                    await workflow.execute_activity(
                        RELEASE_CAPTURE,
                        ReleaseCaptureInput(spec=self._state.spec),
                        result_type=ReleaseCaptureResult,
                        task_queue=self._state.io_task_queue,
                        start_to_close_timeout=timedelta(minutes=2),
                        retry_policy=RELEASE_RETRY,
                    )
                except ActivityError as error:
                    # The pipeline still stops; the connector is left for an operator.
                    self._state.last_error = f"releasing capture failed: {error.cause or error}"
            if self._state.spec.reconcile.schedule:
                await self._sync_schedule(delete=True)
            self._set_state(LifecycleState.STOPPED)
            return self._state
        await workflow.wait_condition(workflow.all_handlers_finished)
        self._state.runs += 1
        workflow.continue_as_new(
            StartPipelineInput(
                spec=self._state.spec,
                topic_prefix=self._state.topic_prefix,
                io_task_queue=self._state.io_task_queue,
                carried=self._state,
                cpu_task_queue=self._state.cpu_task_queue,
            )
        )

    def _reconfigured(self) -> bool:
        return self._restart_capture or self._schedule_changed

    async def _discover(self) -> list[str]:
        result: DiscoverCollectionsResult = await workflow.execute_activity(
            DISCOVER_COLLECTIONS,
            DiscoverCollectionsInput(spec=self._state.spec),
            result_type=DiscoverCollectionsResult,
            task_queue=self._state.io_task_queue,
            start_to_close_timeout=timedelta(minutes=1),
            retry_policy=DISCOVERY_RETRY,
        )
        self._state.discovered_at = workflow.now().timestamp()
        return result.collections

    async def _found_new_collections(self) -> bool:
        """Every source.discovery_interval_s: collections created since are added (and snapshotted);
        a listing that fails is recorded and tried again at the next interval."""
        due = self._state.discovered_at + self._state.spec.source.discovery_interval_s
        if workflow.now().timestamp() < due:
            return False
        try:
            found = await self._discover()
        except ActivityError as error:
            self._state.discovered_at = workflow.now().timestamp()
            self._state.last_error = f"listing collections failed: {error.cause or error}"
            return False
        new = [c for c in found if c not in self._state.spec.source.collections]
        if not new:
            return False
        self._add_collections(new, snapshot=True)
        self._restart_capture = True
        return True

    def _add_collections(self, collections: list[str], *, snapshot: bool) -> None:
        """Put collections into the spec and the state; with `snapshot` (and a snapshot mode
        other than never) their existing documents are copied."""
        spec = self._state.spec
        listed = [*spec.source.collections, *collections]
        spec = spec.model_copy(
            update={"source": spec.source.model_copy(update={"collections": listed})}
        )
        self._state.spec = spec
        database = spec.source.database
        for collection in collections:
            table = f"{database}.{collection}"
            self._state.tables[table] = TableProgress(
                table=table,
                uri=spec.sink.table_uri(database, collection),
                topic=spec.topic(self._state.topic_prefix, collection),
            )
            if snapshot and spec.snapshot.mode != SnapshotMode.never:
                self._requested.add(collection)

    async def _stop_capture(self, capture: asyncio.Task[CaptureChangesResult]) -> None:
        if not capture.done():
            capture.cancel()
            with contextlib.suppress(ActivityError, CancelledError, asyncio.CancelledError):
                await capture

    async def _sync_schedule(self, delete: bool = False) -> None:
        """Create, update or delete the reconciliation Schedule; a failure is recorded, and the
        pipeline goes on (scheduled reconciliation is a check, not the data path)."""
        try:
            await workflow.execute_activity(
                SYNC_SCHEDULE,
                SyncScheduleInput(
                    spec=self._state.spec,
                    task_queue=workflow.info().task_queue,
                    io_task_queue=self._state.io_task_queue,
                    cpu_task_queue=self._state.cpu_task_queue,
                    delete=delete,
                ),
                result_type=SyncScheduleResult,
                task_queue=self._state.io_task_queue,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=SCHEDULE_RETRY,
            )
        except ActivityError as error:
            cause = error.cause if error.cause is not None else error
            self._state.last_error = f"reconciliation schedule not updated: {cause}"

    async def _apply_round(self) -> BaseException | None:
        """One micro-batch per table; returns the error if a batch failed for good.

        A batch retries transient errors forever (a broker restarting), so a stop or a pause
        must not wait for it without end: after either, the batch in flight gets a grace period
        to commit and is then cancelled (it is idempotent: the next batch starts from the Delta
        versions).
        """
        self._rounds += 1
        applies = [self._apply(t) for t in self._state.tables.values()]
        self._batches_in_flight = len(applies)
        if self._rounds % DEAD_LETTER_ROUNDS == 1 and workflow.patched("dead-letter-topic"):
            applies.append(self._apply_dead_letters())
        round_ = asyncio.gather(*applies)
        cancelled = False
        if workflow.patched("interruptible-batches"):
            await workflow.wait_condition(
                lambda: (
                    round_.done()
                    or self._stop_requested
                    or self._state.state == LifecycleState.PAUSED
                )
            )
            if not round_.done():
                try:
                    await workflow.wait_condition(round_.done, timeout=BATCH_GRACE)
                except TimeoutError:
                    round_.cancel()
                    cancelled = True
        try:
            await round_
        except (ActivityError, CancelledError, asyncio.CancelledError) as error:
            self._batches_in_flight = 0
            # After our own cancel, the batch's end is not a failure of the pipeline.
            return None if cancelled or not isinstance(error, ActivityError) else error
        self._batches_in_flight = 0
        return None

    def _fail(self, error: BaseException) -> None:
        cause = error.cause if isinstance(error, ActivityError) else error
        if isinstance(cause, ApplicationError):
            self._state.last_error = f"{cause.type}: {cause.message}"
        else:
            self._state.last_error = f"{type(cause).__name__}: {cause}"
        self._set_state(LifecycleState.FAILED)

    def _wants_snapshot(self) -> bool:
        return self._state.spec.snapshot.mode != SnapshotMode.never

    def _start_capture(self) -> asyncio.Task[CaptureChangesResult]:
        start_at = self._state.stream_start or self._state.created_at
        return workflow.start_activity(
            CAPTURE_CHANGES,
            CaptureChangesInput(spec=self._state.spec, start_at=start_at),
            result_type=CaptureChangesResult,
            task_queue=self._state.io_task_queue,
            start_to_close_timeout=timedelta(days=3650),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=CAPTURE_RETRY,
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )

    def _resyncs_after(self, capture: asyncio.Task[CaptureChangesResult]) -> bool:
        """Whether capture ended because its resume point left the oplog and the spec asks for
        a re-sync then (histories from before re-syncs existed fail, as they did)."""
        error = capture.exception()
        cause = error.cause if isinstance(error, ActivityError) else error
        if not isinstance(cause, ApplicationError) or cause.type != "HistoryLost":
            return False
        spec = self._state.spec
        wanted = spec.source.on_history_lost == HistoryLostPolicy.resnapshot or (
            spec.snapshot.mode in (SnapshotMode.when_needed, SnapshotMode.always)
        )
        if not wanted or spec.source.capture is CaptureStrategy.debezium:
            return False
        return workflow.patched("resync-on-history-lost")

    async def _resync(
        self,
        capture: asyncio.Task[CaptureChangesResult],
        snapshots: dict[str, ChildWorkflowHandle],
    ) -> asyncio.Task[CaptureChangesResult] | None:
        """Start over from now: forget the lost checkpoint, stream from here, and snapshot every
        collection (its sweep removes what was deleted in the lost stretch). None if the
        checkpoint could not be reset (the pipeline has failed)."""
        error = capture.exception()
        lost = error.cause if isinstance(error, ActivityError) and error.cause else error
        self._state.resyncs += 1
        try:
            await workflow.execute_activity(
                RESET_CAPTURE,
                ResetCaptureInput(spec=self._state.spec),
                result_type=ResetCaptureResult,
                task_queue=self._state.io_task_queue,
                start_to_close_timeout=timedelta(minutes=2),
                retry_policy=RELEASE_RETRY,
            )
        except ActivityError as reset_error:
            self._fail(reset_error)
            return None
        self._state.last_error = f"re-sync {self._state.resyncs} after: {lost}"
        # Before any range is read: the stream and the snapshot overlap, never leave a gap.
        self._state.stream_start = workflow.now().timestamp()
        for table in self._state.tables.values():
            if table.table in snapshots:
                # Still copying, perhaps from ranges read before the new stream start: copy
                # again once it is done (its rows are older, the second sweep clears them).
                self._after_current.add(table.table)
            else:
                await self._begin_snapshot(table, snapshots)
        self._set_state(LifecycleState.SNAPSHOTTING)
        return self._start_capture()

    async def _start_requested_snapshots(self, snapshots: dict[str, ChildWorkflowHandle]) -> None:
        if not self._requested:
            return
        requested, self._requested = sorted(self._requested), set()
        if not workflow.patched("resnapshot-requests"):
            return
        database = self._state.spec.source.database
        for collection in requested:
            await self._begin_snapshot(self._state.tables[f"{database}.{collection}"], snapshots)
        if self._state.state == LifecycleState.STREAMING:
            self._set_state(LifecycleState.SNAPSHOTTING)

    async def _begin_snapshot(
        self, table: TableProgress, snapshots: dict[str, ChildWorkflowHandle]
    ) -> None:
        if table.table in snapshots:
            # One is copying; with the stream running all along, its rows and the stream's
            # changes already cover everything a second one would.
            return
        table.snapshot = "running"
        table.snapshots_started += 1
        snapshots[table.table] = await self._start_snapshot(table)

    async def _start_snapshot(self, table: TableProgress) -> ChildWorkflowHandle:
        collection = table.table.split(".", 1)[1]
        child_id = f"snapshot:{self._state.spec.name}:{collection}"
        if table.snapshots_started > 1:
            child_id += f":{table.snapshots_started}"
        return await workflow.start_child_workflow(
            SNAPSHOT_WORKFLOW,
            SnapshotCollectionInput(
                spec=self._state.spec,
                collection=collection,
                io_task_queue=self._state.io_task_queue,
            ),
            id=child_id,
            result_type=SnapshotCollectionResult,
        )

    def _collect_snapshots(self, snapshots: dict[str, ChildWorkflowHandle]) -> None:
        for name, handle in list(snapshots.items()):
            if not handle.done():
                continue
            del snapshots[name]
            table = self._state.tables[name]
            if name in self._after_current:
                self._after_current.discard(name)
                self._requested.add(name.split(".", 1)[1])
            error = handle.exception()
            if error is not None:
                # The stream goes on; the table lacks the documents that existed at creation.
                self._state.last_error = f"snapshot of {name} failed: {error}"
                table.snapshot = "failed"
                continue
            result: SnapshotCollectionResult = handle.result()
            table.snapshot = "applying"
            table.snapshot_documents = result.documents
            table.snapshot_horizon = result.offsets
            table.snapshot_sweep_before = result.min_seq
        if self._state.state == LifecycleState.SNAPSHOTTING and not snapshots:
            self._set_state(LifecycleState.STREAMING)

    async def _apply(self, table: TableProgress) -> None:
        collection = table.table.split(".", 1)[1]
        # Tombstones keep deleted documents from coming back through an older snapshot row
        # until every row the snapshot wrote has been applied.
        purge = table.snapshot == "applying" and all(
            int(table.offsets.get(p, -1)) >= o for p, o in table.snapshot_horizon.items()
        )
        result: ApplyBatchResult = await workflow.execute_activity(
            APPLY_BATCH,
            ApplyBatchInput(
                spec=self._state.spec,
                collection=collection,
                keep_tombstones=table.snapshot in ("running", "applying") and not purge,
                purge_tombstones=purge,
                sweep_before_seq=table.snapshot_sweep_before if purge else "",
            ),
            result_type=ApplyBatchResult,
            task_queue=self._state.io_task_queue,
            start_to_close_timeout=timedelta(minutes=5),
            # The batch heartbeats while it runs (a long MERGE too): a worker killed mid-batch
            # has it retried elsewhere after this, not after the start-to-close timeout.
            heartbeat_timeout=APPLY_HEARTBEAT,
            retry_policy=APPLY_RETRY,
        )
        table.offsets = result.offsets or table.offsets
        table.applied += result.applied
        table.dead_letters += result.dead_letters
        if result.delta_version is not None:
            table.delta_version = result.delta_version
            table.batches += 1
        table.last_source_ts_ms = max(table.last_source_ts_ms, result.max_source_ts_ms)
        table.schema_changes += result.schema_changes
        for reason, count in result.dead_letter_reasons.items():
            table.dead_letter_reasons[reason] = table.dead_letter_reasons.get(reason, 0) + count
        table.batch_size, table.backlog = result.batch_size, result.backlog
        table.maintained_at = table.maintained_at or workflow.now().timestamp()
        if self._maintenance_due(table.maintained_at) and workflow.patched("table-maintenance"):
            # Between this table's batches, never beside one: a compaction racing a MERGE on
            # the same table makes one of them fail (docs/maintenance.md).
            table.maintained_at = workflow.now().timestamp()
            table.maintenance_runs += 1
            await self._maintain(MaintainTableInput(self._state.spec, collection))
            if self._state.spec.sink.change_log:
                await self._maintain(
                    MaintainTableInput(self._state.spec, collection, change_log=True)
                )
        if purge:
            table.snapshot = "done"
            table.snapshot_horizon = {}
            table.snapshot_sweep_before = ""
            table.rows_swept += result.rows_swept

    async def _apply_dead_letters(self) -> None:
        result: ApplyDeadLettersResult = await workflow.execute_activity(
            APPLY_DEAD_LETTERS,
            ApplyDeadLettersInput(spec=self._state.spec),
            result_type=ApplyDeadLettersResult,
            task_queue=self._state.io_task_queue,
            start_to_close_timeout=timedelta(minutes=5),
            retry_policy=APPLY_RETRY,
        )
        self._state.capture_dead_letters += result.dead_letters
        state = self._state
        state.dead_letters_maintained_at = (
            state.dead_letters_maintained_at or workflow.now().timestamp()
        )
        if self._maintenance_due(state.dead_letters_maintained_at) and workflow.patched(
            "table-maintenance"
        ):
            # Only appends write the dead-letter table: compaction does not conflict with them.
            state.dead_letters_maintained_at = workflow.now().timestamp()
            if not state.tables:
                return
            first = next(iter(state.tables.values())).table.split(".", 1)[1]
            await self._maintain(MaintainTableInput(state.spec, first, dead_letters=True))

    def _maintenance_due(self, last: float) -> bool:
        """The maintenance interval passed since `last` (the first interval counts from now)."""
        interval = self._state.spec.maintenance.interval_minutes * 60
        return last > 0 and workflow.now().timestamp() - last >= interval

    async def _maintain(self, input: MaintainTableInput) -> None:
        try:
            await workflow.execute_activity(
                MAINTAIN_TABLE,
                input,
                result_type=MaintainTableResult,
                task_queue=self._state.io_task_queue,
                start_to_close_timeout=timedelta(hours=2),
                heartbeat_timeout=timedelta(minutes=15),
                retry_policy=MAINTENANCE_RETRY,
            )
        except ActivityError as error:
            cause = error.cause if error.cause is not None else error
            self._state.last_maintenance_error = f"{input.collection}: {cause}"

    def _fail_from(self, capture: asyncio.Task) -> None:
        error = capture.exception()
        if error is None:
            self._state.last_error = "capture ended without an error"
            self._set_state(LifecycleState.FAILED)
        else:
            self._fail(error)

    def _set_state(self, state: LifecycleState) -> None:
        if state != self._state.state:  # one log line per state change (never during replay)
            reason = self._state.last_error if state == LifecycleState.FAILED else None
            workflow.logger.info(
                "pipeline state %s", state.value,
                extra={"state": state.value, "previous_state": self._state.state.value,
                       "reason": reason},
            )  # fmt: skip
        self._state.state = state
        _upsert_search_attributes(self._state)

    @workflow.signal
    def pause(self) -> None:
        if self._state.state in (LifecycleState.STREAMING, LifecycleState.SNAPSHOTTING):
            self._set_state(LifecycleState.PAUSED)
        elif self._state.state == LifecycleState.CREATED:
            self._paused_before_start = True

    @workflow.signal
    def resume(self) -> None:
        self._paused_before_start = False
        if self._state.state == LifecycleState.PAUSED:
            copying = any(t.snapshot == "running" for t in self._state.tables.values())
            self._set_state(LifecycleState.SNAPSHOTTING if copying else LifecycleState.STREAMING)
            if self._state.spec.snapshot.mode == SnapshotMode.always:
                self._requested.update(self._state.spec.source.collections)

    @workflow.update
    def resnapshot(self, collections: list[str]) -> list[str]:
        """Copy these collections (all when empty) again; returns the ones that will be."""
        targets = set(collections or self._state.spec.source.collections)
        self._requested.update(targets)
        return sorted(targets)

    @resnapshot.validator
    def _validate_resnapshot(self, collections: list[str]) -> None:
        spec = self._state.spec
        unknown = sorted(set(collections) - set(spec.source.collections))
        if unknown:
            raise ValueError(
                f"pipeline {spec.name!r} does not capture {', '.join(unknown)}; "
                f"it captures {', '.join(spec.source.collections)}"
            )
        if self._stop_requested or self._state.state in (
            LifecycleState.STOPPED,
            LifecycleState.FAILED,
        ):
            raise ValueError(f"pipeline {spec.name!r} is {self._state.state.value.lower()}")

    @workflow.signal
    def stop(self) -> None:
        self._stop_requested = True

    def _explicit(self, spec: PipelineSpec) -> PipelineSpec:
        """A whole-database spec (no collections listed) with the collections found so far."""
        if spec.source.collections:
            return spec
        found = self._state.spec.source.collections
        return spec.model_copy(
            update={"source": spec.source.model_copy(update={"collections": list(found)})}
        )

    def _shown_spec(self) -> PipelineSpec:
        """The spec as the user wrote it (a whole-database spec lists no collections)."""
        spec = self._state.spec
        if not self._state.all_collections:
            return spec
        return spec.model_copy(
            update={"source": spec.source.model_copy(update={"collections": []})}
        )

    def _refuse_if_ended(self) -> None:
        if self._stop_requested or self._state.state in (
            LifecycleState.STOPPED,
            LifecycleState.FAILED,
        ):
            state = "stopping" if self._stop_requested else self._state.state.value.lower()
            raise ValueError(f"pipeline {self._state.spec.name!r} is {state}")

    @workflow.update
    def reconfigure(self, input: ReconfigurePipelineInput) -> ReconfigurePipelineResult:
        """Take a new spec: apply picks it up at its next batch; capture restarts if the
        source changed; added collections are snapshotted (unless snapshot.mode is never)."""
        old, new = self._state.spec, self._explicit(input.spec)
        self._state.all_collections = not input.spec.source.collections
        before, after = set(old.source.collections), set(new.source.collections)
        result = ReconfigurePipelineResult(
            changed=_changed_paths(old, new),
            added=[c for c in new.source.collections if c not in before],
            removed=[c for c in old.source.collections if c not in after],
        )
        if not result.changed:
            return result
        self._state.spec = new
        self._state.reconfigurations += 1
        database = new.source.database
        for collection in result.removed:
            # The table stays in the lake; it is no longer applied.
            del self._state.tables[f"{database}.{collection}"]
            self._requested.discard(collection)
            self._after_current.discard(f"{database}.{collection}")
        for collection in result.added:
            table = f"{database}.{collection}"
            self._state.tables[table] = TableProgress(
                table=table,
                uri=new.sink.table_uri(database, collection),
                topic=new.topic(self._state.topic_prefix, collection),
            )
            if new.snapshot.mode != SnapshotMode.never:
                self._requested.add(collection)
        if new.source != old.source:
            self._restart_capture = True
        if new.reconcile.schedule != old.reconcile.schedule or (
            new.reconcile.schedule and new.reconcile != old.reconcile
        ):
            self._schedule_changed = True
        return result

    @reconfigure.validator
    def _validate_reconfigure(self, input: ReconfigurePipelineInput) -> None:
        self._refuse_if_ended()
        old, new = self._state.spec, self._explicit(input.spec)
        if new.name != old.name:
            raise ValueError(f"the name cannot change ({old.name!r}); create another pipeline")
        for name in FIXED_SOURCE_FIELDS:
            if getattr(new.source, name) != getattr(old.source, name):
                raise ValueError(
                    f"source.{name} cannot change on a running pipeline; stop it and create "
                    "another (its tables and checkpoints belong to this source)"
                )
        if new.sink.uri != old.sink.uri:
            raise ValueError(
                f"sink.uri cannot change (the tables are at {old.sink.uri}); stop the pipeline "
                "and create another"
            )
        moved = set(new.source.collections) ^ set(old.source.collections)
        if moved and old.source.capture is CaptureStrategy.debezium:
            raise ValueError(
                "collections cannot be added or removed on a debezium pipeline (the "
                "connector's include list is fixed); stop it and create another"
            )
        database = old.source.database
        copying = sorted(
            c
            for c in set(old.source.collections) - set(new.source.collections)
            if self._state.tables[f"{database}.{c}"].snapshot == "running"
        )
        if copying:
            raise ValueError(
                f"{', '.join(copying)} cannot be removed while its snapshot runs; "
                "try again once the snapshot is done"
            )

    @workflow.update
    async def reconcile(self, input: StartReconcileInput) -> StartReconcileResult:
        """Start a reconciliation run now (a child that outlives a continue-as-new or a stop:
        ABANDON); it signals `reconciled` back when it ends."""
        spec = self._state.spec
        self._state.reconciliations_started += 1
        child_id = f"reconcile:{spec.name}:{self._state.reconciliations_started}"
        collections = input.collections or list(spec.source.collections)
        await workflow.start_child_workflow(
            RECONCILE_WORKFLOW,
            ReconcileInput(
                spec=spec,
                collections=collections,
                mode=input.mode or spec.reconcile.mode.value,
                repair=spec.reconcile.repair if input.repair is None else input.repair,
                io_task_queue=self._state.io_task_queue,
                cpu_task_queue=self._state.cpu_task_queue,
                trigger="api",
            ),
            id=child_id,
            parent_close_policy=ParentClosePolicy.ABANDON,
            search_attributes=TypedSearchAttributes([SearchAttributePair(PIPELINE_KEY, spec.name)]),
        )
        return StartReconcileResult(id=child_id, collections=collections)

    @reconcile.validator
    def _validate_reconcile(self, input: StartReconcileInput) -> None:
        self._refuse_if_ended()
        spec = self._state.spec
        unknown = sorted(set(input.collections) - set(spec.source.collections))
        if unknown:
            raise ValueError(
                f"pipeline {spec.name!r} does not capture {', '.join(unknown)}; "
                f"it captures {', '.join(spec.source.collections)}"
            )
        modes = [m.value for m in ReconcileMode]
        if input.mode and input.mode not in modes:
            raise ValueError(f"mode {input.mode!r} is not one of {', '.join(modes)}")

    @workflow.signal
    def reconciled(self, summary: ReconcileSummary) -> None:
        """A reconciliation run of this pipeline ended (on demand or scheduled)."""
        self._state.last_reconciliation = summary

    @workflow.query
    def status(self) -> PipelineStatus:
        spec = self._state.spec
        return PipelineStatus(
            name=spec.name,
            state=self._state.state,
            tables={name: table.uri for name, table in self._state.tables.items()},
            progress=self._state.tables,
            last_error=self._state.last_error,
            spec=self._shown_spec(),
            capture_dead_letters=self._state.capture_dead_letters,
            resyncs=self._state.resyncs,
            last_reconciliation=self._state.last_reconciliation,
            last_maintenance_error=self._state.last_maintenance_error,
            reconfigurations=self._state.reconfigurations,
            batches_in_flight=self._batches_in_flight,
        )
