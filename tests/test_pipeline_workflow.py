"""PipelineWorkflow with same-name mock activities: no MongoDB, Kafka or Delta.

`FakeIO` registers mock activities under the names the workflow calls (capture, apply and the
snapshot's plan and copy) and records what the workflow asked of them. Most tests run on
Temporal's time-skipping test server; the continue-as-new test runs on the dev server, whose
dynamic config lowers the history length at which the server suggests continuing as new (the
test server has no such setting).

The capture mock stays running for the whole pipeline, and the test server does not skip time
while an activity runs, so these tests wait by polling conditions (queries, mock counters, the
workflow history), never by sleeping for a guessed duration.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import EventType, IndexedValueType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

import activities
from activities.contracts import (
    APPLY_BATCH,
    APPLY_DEAD_LETTERS,
    CAPTURE_CHANGES,
    COPY_SNAPSHOT_RANGE,
    DISCOVER_COLLECTIONS,
    MAINTAIN_TABLE,
    PLAN_SNAPSHOT,
    RELEASE_CAPTURE,
    RESET_CAPTURE,
    STUBS,
    ApplyBatchInput,
    ApplyBatchResult,
    ApplyDeadLettersInput,
    ApplyDeadLettersResult,
    CaptureChangesInput,
    CaptureChangesResult,
    CopySnapshotRangeInput,
    CopySnapshotRangeResult,
    DiscoverCollectionsInput,
    DiscoverCollectionsResult,
    MaintainTableInput,
    MaintainTableResult,
    PlanSnapshotInput,
    PlanSnapshotResult,
    ReleaseCaptureInput,
    ReleaseCaptureResult,
    ResetCaptureInput,
    ResetCaptureResult,
    SnapshotRange,
)
from lakeward.settings import Settings
from lakeward.stack.servers import venv_bin
from workers.main import build_workers, workflow_runner
from workflows.contracts import (
    DATA_CONVERTER,
    LifecycleState,
    PipelineState,
    PipelineStatus,
    StartPipelineInput,
    TableProgress,
)
from workflows.pipeline import PIPELINE_KEY, SOURCE_KEY, STATE_KEY, PipelineWorkflow
from workflows.snapshot import SnapshotWorkflow
from workflows.spec import PipelineSpec

T = TypeVar("T")

SEARCH_ATTRIBUTE_KEYS = [PIPELINE_KEY, STATE_KEY, SOURCE_KEY]


# --- mock activities -----------------------------------------------------------------------------


@dataclass
class Committed:
    """What one collection's mock apply has handed the workflow so far: the workflow's oracle."""

    calls: int = 0
    batches: int = 0
    applied: int = 0
    dead_letters: int = 0
    delta_version: int | None = None
    offsets: dict[str, int] = field(default_factory=dict)
    last_source_ts_ms: int = 0


class FakeIO:
    """Same-name mock activities.

    capture heartbeats until it is cancelled (and counts the cancellations) or raises
    `capture_error`. apply commits a small batch per call, except every third call, which finds
    nothing new (no Delta version, no offsets: the workflow must keep what it had). Clearing
    `flowing` holds apply calls in flight until it is set again. The snapshot plans two ranges of
    five documents each; clearing `copying` holds the copies.
    """

    def __init__(
        self, *, capture_error: ApplicationError | None = None, first_version: int = 0
    ) -> None:
        self.capture_error = capture_error
        self.first_version = first_version
        self.capture_inputs: list[CaptureChangesInput] = []
        self.capture_cancelled = 0
        self.apply_calls: list[ApplyBatchInput] = []
        self.committed: dict[str, Committed] = {}
        self.in_flight = 0
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.copying = asyncio.Event()
        self.copying.set()
        self.copies: dict[tuple[str, int], int] = {}
        self.released = 0
        self.resets = 0
        self.dead_letter_calls = 0
        #: When set, only the first capture attempt raises it.
        self.first_capture_error: ApplicationError | None = None
        #: When set, every apply call raises it (after being counted).
        self.apply_error: ApplicationError | None = None
        #: Maintenance asked for, with the apply batches in flight when it started.
        self.maintained: list[tuple[MaintainTableInput, int]] = []
        #: What listing the database's collections finds (whole-database pipelines).
        self.collections_found: list[str] = ["customers", "orders"]
        self.discoveries = 0

    @activity.defn(name=CAPTURE_CHANGES)
    async def capture_changes(self, input: CaptureChangesInput) -> CaptureChangesResult:
        self.capture_inputs.append(input)
        if self.capture_error is not None:
            raise self.capture_error
        if self.first_capture_error is not None and len(self.capture_inputs) == 1:
            raise self.first_capture_error
        try:
            while True:
                # Cancellation reaches an activity only through its heartbeats.
                activity.heartbeat(len(self.apply_calls))
                await asyncio.sleep(0.02)
        except asyncio.CancelledError:
            self.capture_cancelled += 1
            raise

    @activity.defn(name=APPLY_BATCH)
    async def apply_batch(self, input: ApplyBatchInput) -> ApplyBatchResult:
        self.apply_calls.append(input)
        if self.apply_error is not None:
            raise self.apply_error
        self.in_flight += 1
        try:
            await self.flowing.wait()
        finally:
            self.in_flight -= 1
        table = self.committed.setdefault(input.collection, Committed())
        table.calls += 1
        if table.calls % 3 == 0:
            return ApplyBatchResult()
        table.batches += 1
        table.applied += 2
        table.dead_letters += 1
        table.delta_version = self.first_version + table.batches
        table.offsets = {"0": 10 * table.batches + 9, "1": 10 * table.batches}
        table.last_source_ts_ms = 1_000 * table.batches
        return ApplyBatchResult(
            records=3,
            applied=2,
            dead_letters=1,
            delta_version=table.delta_version,
            offsets=dict(table.offsets),
            max_source_ts_ms=table.last_source_ts_ms,
        )

    @activity.defn(name=RELEASE_CAPTURE)
    async def release_capture(self, input: ReleaseCaptureInput) -> ReleaseCaptureResult:
        self.released += 1
        return ReleaseCaptureResult(released=False)

    @activity.defn(name=APPLY_DEAD_LETTERS)
    async def apply_dead_letters(self, input: ApplyDeadLettersInput) -> ApplyDeadLettersResult:
        self.dead_letter_calls += 1
        return ApplyDeadLettersResult(records=1, dead_letters=1)

    @activity.defn(name=MAINTAIN_TABLE)
    async def maintain_table(self, input: MaintainTableInput) -> MaintainTableResult:
        self.maintained.append((input, self.in_flight))
        return MaintainTableResult(table_uri="/tmp/lake", compacted=True)

    @activity.defn(name=DISCOVER_COLLECTIONS)
    async def discover_collections(
        self, input: DiscoverCollectionsInput
    ) -> DiscoverCollectionsResult:
        self.discoveries += 1
        return DiscoverCollectionsResult(collections=list(self.collections_found))

    @activity.defn(name=RESET_CAPTURE)
    async def reset_capture(self, input: ResetCaptureInput) -> ResetCaptureResult:
        self.resets += 1
        return ResetCaptureResult(reset=True)

    @activity.defn(name=PLAN_SNAPSHOT)
    async def plan_snapshot(self, input: PlanSnapshotInput) -> PlanSnapshotResult:
        return PlanSnapshotResult(ranges=[SnapshotRange(index=0), SnapshotRange(index=1)])

    @activity.defn(name=COPY_SNAPSHOT_RANGE)
    async def copy_snapshot_range(self, input: CopySnapshotRangeInput) -> CopySnapshotRangeResult:
        await self.copying.wait()
        # The copy's rows land a few batches ahead of what apply has reached.
        reached = self.committed.get(input.collection, Committed()).offsets.get("0", 0)
        return CopySnapshotRangeResult(
            documents=5,
            offsets={"0": reached + 25 + input.range.index},
            seq=f"{0x6000_0000 + 10 * self.snapshot_copies(input):08x}{input.range.index:016x}",
        )

    def snapshot_copies(self, input: CopySnapshotRangeInput) -> int:
        """Copies of this range so far: a later snapshot reads at a later point."""
        key = (input.collection, input.range.index)
        self.copies[key] = self.copies.get(key, 0) + 1
        return self.copies[key]


# --- environment and helpers ---------------------------------------------------------------------


def make_spec(name: str, *collections: str, snapshot: str = "never") -> PipelineSpec:
    """A spec for `shop` (default collection: orders); streaming only unless a snapshot is asked."""
    return PipelineSpec.model_validate(
        {
            "name": name,
            "source": {
                "uri": "mongodb://127.0.0.1:27017/?replicaSet=rs0",
                "database": "shop",
                "collections": list(collections or ["orders"]),
            },
            "sink": {"uri": "/tmp/lake"},
            "snapshot": {"mode": snapshot},
        }
    )


async def register_search_attributes(client: Client) -> None:
    """The workflow upserts these; a server that does not know them fails the workflow task."""
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=client.namespace,
            search_attributes={
                key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
                for key in SEARCH_ATTRIBUTE_KEYS
            },
        )
    )


@pytest.fixture(scope="module")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    """One time-skipping test server for the module (it starts in well under a second)."""
    server = await WorkflowEnvironment.start_time_skipping(
        data_converter=DATA_CONVERTER,
        test_server_existing_path=str(venv_bin("temporal-test-server")),
    )
    try:
        await register_search_attributes(server.client)
        yield server
    finally:
        await server.shutdown()


@asynccontextmanager
async def pipeline_workers(
    client: Client,
    fake: FakeIO,
    unique: str,
    *,
    workflows: Sequence[type] = (),
    activities: Sequence[Callable[..., object]] = (),
) -> AsyncIterator[str]:
    """A workflow worker and an I/O worker, as in production; yields the I/O task queue.

    `workflows` and `activities` are registered beside the pipeline's and the mocks."""
    io_queue = f"io-{unique}"
    async with (
        Worker(
            client,
            task_queue=f"wf-{unique}",
            workflows=[PipelineWorkflow, SnapshotWorkflow, *workflows],
            workflow_runner=workflow_runner(),
        ),
        Worker(
            client,
            task_queue=io_queue,
            activities=[
                fake.capture_changes,
                fake.apply_batch,
                fake.apply_dead_letters,
                fake.plan_snapshot,
                fake.copy_snapshot_range,
                fake.release_capture,
                fake.reset_capture,
                fake.maintain_table,
                fake.discover_collections,
                *activities,
            ],
            # Heartbeats carry cancellation; the default throttle would delay it by up to 24 s.
            max_heartbeat_throttle_interval=timedelta(milliseconds=50),
        ),
    ):
        yield io_queue


async def start_pipeline(
    client: Client,
    spec: PipelineSpec,
    unique: str,
    io_queue: str,
    carried: PipelineState | None = None,
) -> WorkflowHandle[PipelineWorkflow, PipelineState]:
    return await client.start_workflow(
        PipelineWorkflow.run,
        StartPipelineInput(spec=spec, io_task_queue=io_queue, carried=carried),
        id=spec.workflow_id,
        task_queue=f"wf-{unique}",
    )


async def until(
    probe: Callable[[], Awaitable[T]],
    check: Callable[[T], object],
    what: str,
    attempts: int = 400,
) -> T:
    """Poll probe() until check(value) holds; fail with the last value after `attempts` polls."""
    value = await probe()
    for _ in range(attempts):
        if check(value):
            return value
        await asyncio.sleep(0.025)
        value = await probe()
    if check(value):
        return value
    raise AssertionError(f"never saw {what}; last value: {value!r}")


async def result_of(handle: WorkflowHandle[PipelineWorkflow, PipelineState]) -> PipelineState:
    """The run's result; a workflow that never ends fails the test instead of hanging the suite.

    The bound is a guard, not a timing expectation: every run here ends within seconds.
    """
    try:
        async with asyncio.timeout(60):
            return await handle.result()
    except TimeoutError:
        raise AssertionError(f"{handle.id} did not end") from None


async def status_until(
    handle: WorkflowHandle, check: Callable[[PipelineStatus], object], what: str
) -> PipelineStatus:
    return await until(lambda: handle.query(PipelineWorkflow.status), check, what)


async def fake_until(check: Callable[[], object], what: str) -> None:
    async def probe() -> bool:
        return bool(check())

    await until(probe, bool, what)


WORKFLOW_TASK_EVENTS = {
    EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED,
    EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT,
}


def is_settled(events: Sequence[HistoryEvent]) -> bool:
    """No workflow task is pending or running: the workflow decided all it will decide for now.

    (The events of a task's commands come after its WorkflowTaskCompleted; whatever wakes the
    workflow, an activity result or a signal, schedules a new workflow task with it.)
    """
    last = [e.event_type for e in events if e.event_type in WORKFLOW_TASK_EVENTS][-1:]
    return last == [EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED]


@dataclass
class ActivityEvents:
    """What the history records about one activity type."""

    scheduled: int
    completed: int
    canceled: int
    settled: bool  # see is_settled


async def activity_events(handle: WorkflowHandle, name: str) -> ActivityEvents:
    events = (await handle.fetch_history()).events
    scheduled = {
        e.event_id
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == name
    }
    completed = sum(
        1
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
        and e.activity_task_completed_event_attributes.scheduled_event_id in scheduled
    )
    canceled = sum(
        1
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED
        and e.activity_task_canceled_event_attributes.scheduled_event_id in scheduled
    )
    settled = is_settled(events)
    return ActivityEvents(len(scheduled), completed, canceled, settled)


async def signals_settled(handle: WorkflowHandle) -> int | None:
    """How many signals the workflow has handled, or None while a workflow task is pending."""
    events = (await handle.fetch_history()).events
    if not is_settled(events):
        return None
    return sum(
        1 for e in events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    )


def assert_progress_matches(progress: TableProgress, committed: Committed) -> None:
    assert progress.applied == committed.applied
    assert progress.batches == committed.batches
    assert progress.dead_letters == committed.dead_letters
    assert progress.delta_version == committed.delta_version
    assert progress.offsets == committed.offsets
    assert progress.last_source_ts_ms == committed.last_source_ts_ms


# --- streaming and status ------------------------------------------------------------------------


async def test_started_pipeline_streams_and_reports_progress_per_table(env, unique) -> None:
    fake = FakeIO()
    spec = make_spec(f"p-{unique}", "orders", "customers")
    async with pipeline_workers(env.client, fake, unique) as io_queue:
        handle = await start_pipeline(env.client, spec, unique, io_queue)
        live = await status_until(
            handle,
            lambda s: all(p.batches >= 3 for p in s.progress.values()),
            "three committed batches in every table",
        )
        assert live.state == LifecycleState.STREAMING
        assert live.name == spec.name
        assert live.tables == {
            "shop.orders": "/tmp/lake/shop/orders",
            "shop.customers": "/tmp/lake/shop/customers",
        }
        assert live.progress["shop.orders"].topic == "lakeward.shop.orders"
        assert len(fake.capture_inputs) == 1
        assert fake.capture_inputs[0].spec == spec
        assert fake.capture_inputs[0].start_at > 0  # the pipeline's creation, from workflow.now()
        assert {call.collection for call in fake.apply_calls} == {"orders", "customers"}

        await handle.signal(PipelineWorkflow.stop)
        final = await result_of(handle)
        status = await handle.query(PipelineWorkflow.status)

    assert final.state == status.state == LifecycleState.STOPPED
    for collection in ("orders", "customers"):
        table = f"shop.{collection}"
        committed = fake.committed[collection]
        # Every third call found nothing: offsets and versions survive it, counts do not move.
        assert committed.calls > committed.batches >= 3
        assert_progress_matches(status.progress[table], committed)
        assert final.tables[table] == status.progress[table]
    # Capture's dead letters are moved in the first round and every tenth after it.
    rounds = max(fake.committed[c].calls for c in ("orders", "customers"))
    assert fake.dead_letter_calls == (rounds - 1) // 10 + 1
    assert status.capture_dead_letters == fake.dead_letter_calls


# --- pause, resume, stop -------------------------------------------------------------------------


async def test_pause_lets_the_batch_in_flight_finish_and_starts_no_new_one(env, unique) -> None:
    fake = FakeIO()
    async with pipeline_workers(env.client, fake, unique) as io_queue:
        handle = await start_pipeline(env.client, make_spec(f"p-{unique}"), unique, io_queue)
        await status_until(handle, lambda s: s.progress["shop.orders"].batches >= 2, "batches")
        fake.flowing.clear()
        await fake_until(lambda: fake.in_flight == 1, "an apply batch held in flight")

        await handle.signal(PipelineWorkflow.pause)
        paused = await status_until(handle, lambda s: s.state == LifecycleState.PAUSED, "PAUSED")
        # PAUSED, with the held batch still running: the table may still change.
        assert paused.batches_in_flight == 1
        calls_at_pause = len(fake.apply_calls)
        fake.flowing.set()

        # The batch in flight completes and is counted; the workflow task that saw it
        # schedules nothing new.
        events = await until(
            lambda: activity_events(handle, APPLY_BATCH),
            lambda e: e.completed == calls_at_pause and e.settled,
            "the batch in flight completed and the workflow settled",
        )
        assert events.scheduled == calls_at_pause
        status = await handle.query(PipelineWorkflow.status)
        assert_progress_matches(status.progress["shop.orders"], fake.committed["orders"])
        assert status.batches_in_flight == 0

        # Time passes (the test server cannot skip it while capture runs) and nothing starts.
        await env.sleep(timedelta(seconds=1))
        assert len(fake.apply_calls) == calls_at_pause
        assert (await activity_events(handle, APPLY_BATCH)).scheduled == calls_at_pause

        # A second pause changes nothing.
        await handle.signal(PipelineWorkflow.pause)
        await until(
            lambda: signals_settled(handle),
            lambda n: n == 2,
            "the second pause handled",
        )
        status = await handle.query(PipelineWorkflow.status)
        assert status.state == LifecycleState.PAUSED
        assert len(fake.apply_calls) == calls_at_pause
        assert (await activity_events(handle, APPLY_BATCH)).scheduled == calls_at_pause

        await handle.signal(PipelineWorkflow.resume)
        await fake_until(
            lambda: len(fake.apply_calls) >= calls_at_pause + 3, "apply batches after resume"
        )
        status = await handle.query(PipelineWorkflow.status)
        assert status.state == LifecycleState.STREAMING
        assert len(fake.capture_inputs) == 1  # pausing leaves capture running

        await handle.signal(PipelineWorkflow.stop)
        final = await result_of(handle)
    assert final.state == LifecycleState.STOPPED
    assert_progress_matches(final.tables["shop.orders"], fake.committed["orders"])


@pytest.mark.parametrize("paused_first", [False, True], ids=["streaming", "paused"])
async def test_stop_ends_in_stopped_and_cancels_capture(env, unique, paused_first) -> None:
    fake = FakeIO()
    async with pipeline_workers(env.client, fake, unique) as io_queue:
        handle = await start_pipeline(env.client, make_spec(f"p-{unique}"), unique, io_queue)
        await status_until(handle, lambda s: s.progress["shop.orders"].batches >= 1, "a batch")
        if paused_first:
            await handle.signal(PipelineWorkflow.pause)
            await status_until(handle, lambda s: s.state == LifecycleState.PAUSED, "PAUSED")

        await handle.signal(PipelineWorkflow.stop)
        final = await result_of(handle)
        status = await handle.query(PipelineWorkflow.status)
        description = await handle.describe()

    assert final.state == status.state == LifecycleState.STOPPED
    assert final.last_error is None
    assert fake.capture_cancelled == 1
    assert fake.released == 1, "stop releases what capture set up (a Debezium connector)"
    assert (await activity_events(handle, CAPTURE_CHANGES)).canceled == 1
    # Stop waits for the batch in flight: every apply the workflow scheduled completed.
    applies = await activity_events(handle, APPLY_BATCH)
    assert applies.scheduled == applies.completed == len(fake.apply_calls)
    assert_progress_matches(final.tables["shop.orders"], fake.committed["orders"])
    assert description.typed_search_attributes.get(STATE_KEY) == LifecycleState.STOPPED.value


# --- snapshot stage -----------------------------------------------------------------------------


async def test_snapshot_stage_keeps_tombstones_until_its_rows_are_applied(env, unique) -> None:
    fake = FakeIO()
    fake.copying.clear()
    spec = make_spec(f"p-{unique}", snapshot="initial")
    async with pipeline_workers(env.client, fake, unique) as io_queue:
        handle = await start_pipeline(env.client, spec, unique, io_queue)
        status = await status_until(
            handle, lambda s: s.progress["shop.orders"].batches >= 1, "a batch while copying"
        )
        assert status.state == LifecycleState.SNAPSHOTTING
        assert status.progress["shop.orders"].snapshot == "running"

        # Pausing and resuming mid-copy returns to SNAPSHOTTING, not to STREAMING.
        await handle.signal(PipelineWorkflow.pause)
        await status_until(handle, lambda s: s.state == LifecycleState.PAUSED, "PAUSED")
        await handle.signal(PipelineWorkflow.resume)
        await status_until(handle, lambda s: s.state == LifecycleState.SNAPSHOTTING, "resumed")

        fake.copying.set()
        status = await status_until(
            handle, lambda s: s.state == LifecycleState.STREAMING, "the snapshot collected"
        )
        assert status.progress["shop.orders"].snapshot_documents == 10
        status = await status_until(
            handle, lambda s: s.progress["shop.orders"].snapshot == "done", "tombstones purged"
        )
        assert status.progress["shop.orders"].snapshot_horizon == {}
        await handle.signal(PipelineWorkflow.stop)
        final = await result_of(handle)

    assert final.state == LifecycleState.STOPPED
    flags = [(call.keep_tombstones, call.purge_tombstones) for call in fake.apply_calls]
    purged_at = flags.index((False, True))
    # Tombstones are kept up to the one batch that purges them, and never asked for after it.
    assert flags[:purged_at] == [(True, False)] * purged_at
    assert set(flags[purged_at + 1 :]) <= {(False, False)}
    assert flags.count((False, True)) == 1


# --- failure -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "non_retryable", [True, False], ids=["non-retryable", "non-retryable-by-type"]
)
async def test_capture_source_error_fails_the_pipeline(env, unique, non_retryable) -> None:
    error = ApplicationError(
        "change stream on shop cannot resume: the oplog rolled over",
        type="CaptureSourceError",
        non_retryable=non_retryable,
    )
    fake = FakeIO(capture_error=error)
    async with pipeline_workers(env.client, fake, unique) as io_queue:
        handle = await start_pipeline(env.client, make_spec(f"p-{unique}"), unique, io_queue)
        final = await result_of(handle)
        status = await handle.query(PipelineWorkflow.status)
        description = await handle.describe()

    assert final.state == status.state == LifecycleState.FAILED
    assert status.last_error is not None
    assert "CaptureSourceError" in status.last_error
    assert "oplog rolled over" in status.last_error
    assert len(fake.capture_inputs) == 1  # the retry policy never retries a terminal error
    assert description.typed_search_attributes.get(STATE_KEY) == LifecycleState.FAILED.value


async def test_a_terminal_apply_error_fails_the_pipeline(env, unique) -> None:
    fake = FakeIO()
    fake.apply_error = ApplicationError(
        "table URI s3://nowhere is not reachable", type="TableConfigError", non_retryable=True
    )
    async with pipeline_workers(env.client, fake, unique) as io_queue:
        handle = await start_pipeline(env.client, make_spec(f"p-{unique}"), unique, io_queue)
        final = await result_of(handle)
        status = await handle.query(PipelineWorkflow.status)
        description = await handle.describe()
    assert final.state == status.state == LifecycleState.FAILED
    assert status.last_error is not None and "TableConfigError" in status.last_error
    assert description.typed_search_attributes.get(STATE_KEY) == LifecycleState.FAILED.value


async def test_stop_ends_a_pipeline_whose_apply_keeps_failing(env, unique) -> None:
    """A batch that retries forever (a broker down) must not hold a stop back for ever."""
    fake = FakeIO()
    fake.apply_error = ApplicationError("broker restarting", type="KafkaReadError")
    async with pipeline_workers(env.client, fake, unique) as io_queue:
        handle = await start_pipeline(env.client, make_spec(f"p-{unique}"), unique, io_queue)
        await fake_until(lambda: len(fake.apply_calls) >= 2, "apply retried")
        await handle.signal(PipelineWorkflow.stop)
        final = await result_of(handle)
    assert final.state == LifecycleState.STOPPED
    assert fake.capture_cancelled == 1


# --- continue-as-new -----------------------------------------------------------------------------


def carried_state(spec: PipelineSpec, io_queue: str, state: LifecycleState) -> PipelineState:
    return PipelineState(
        spec=spec,
        state=state,
        runs=3,
        io_task_queue=io_queue,
        created_at=1_700_000_000.0,
        tables={
            "shop.orders": TableProgress(
                table="shop.orders",
                uri="/tmp/lake/shop/orders",
                topic="lakeward.shop.orders",
                offsets={"0": 999, "1": 990},
                delta_version=40,
                applied=100,
                batches=40,
                dead_letters=7,
                last_source_ts_ms=123,
            )
        },
    )


async def test_a_run_continues_from_the_carried_state(env, unique) -> None:
    fake = FakeIO(first_version=40)
    spec = make_spec(f"p-{unique}")
    async with pipeline_workers(env.client, fake, unique) as io_queue:
        carried = carried_state(spec, io_queue, LifecycleState.STREAMING)
        fake.flowing.clear()
        handle = await start_pipeline(env.client, spec, unique, io_queue, carried=carried)
        await fake_until(lambda: fake.in_flight == 1, "the first apply batch in flight")
        status = await handle.query(PipelineWorkflow.status)
        assert status.state == LifecycleState.STREAMING
        assert status.progress == carried.tables
        # Capture without a checkpoint starts at the pipeline's creation, not this run's start.
        assert fake.capture_inputs[0].start_at == carried.created_at

        fake.flowing.set()
        await status_until(handle, lambda s: s.progress["shop.orders"].batches >= 43, "batches")
        await handle.signal(PipelineWorkflow.stop)
        final = await result_of(handle)

    committed = fake.committed["orders"]
    progress = final.tables["shop.orders"]
    assert final.state == LifecycleState.STOPPED
    assert final.runs == 3  # stopping is not continuing: the count is as carried
    assert progress.applied == 100 + committed.applied
    assert progress.batches == 40 + committed.batches
    assert progress.dead_letters == 7 + committed.dead_letters
    assert progress.delta_version == committed.delta_version
    assert progress.offsets == committed.offsets


async def test_a_carried_paused_pipeline_stays_paused(env, unique) -> None:
    fake = FakeIO()
    spec = make_spec(f"p-{unique}")
    async with pipeline_workers(env.client, fake, unique) as io_queue:
        carried = carried_state(spec, io_queue, LifecycleState.PAUSED)
        handle = await start_pipeline(env.client, spec, unique, io_queue, carried=carried)
        await until(
            lambda: activity_events(handle, CAPTURE_CHANGES),
            lambda e: e.scheduled == 1 and e.settled,
            "the first workflow task done",
        )
        assert (await activity_events(handle, APPLY_BATCH)).scheduled == 0
        status = await handle.query(PipelineWorkflow.status)
        assert status.state == LifecycleState.PAUSED
        assert status.progress == carried.tables

        await handle.signal(PipelineWorkflow.resume)
        await status_until(handle, lambda s: s.progress["shop.orders"].batches > 40, "a batch")
        await handle.signal(PipelineWorkflow.stop)
        final = await result_of(handle)
    assert final.state == LifecycleState.STOPPED
    assert final.tables["shop.orders"].applied == 100 + fake.committed["orders"].applied


@pytest.fixture(scope="module")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    """A dev server that suggests continue-as-new after 60 history events (default: 4 Ki)."""
    server = await WorkflowEnvironment.start_local(
        data_converter=DATA_CONVERTER,
        dev_server_existing_path=str(venv_bin("temporal")),
        search_attributes=SEARCH_ATTRIBUTE_KEYS,
        dev_server_extra_args=[
            "--dynamic-config-value",
            "limit.historyCount.suggestContinueAsNew=60",
        ],
    )
    try:
        yield server
    finally:
        await server.shutdown()


async def test_continue_as_new_carries_counts_across_runs(dev_env, unique) -> None:
    client = dev_env.client
    fake = FakeIO()
    spec = make_spec(f"p-{unique}", "orders", "customers")
    async with pipeline_workers(client, fake, unique) as io_queue:
        handle = await start_pipeline(client, spec, unique, io_queue)
        # Each run starts its own capture: the third capture means two continue-as-new.
        await fake_until(lambda: len(fake.capture_inputs) >= 3, "a third run")
        await handle.signal(PipelineWorkflow.stop)
        final = await result_of(handle)
        status = await handle.query(PipelineWorkflow.status)
        description = await handle.describe()

    assert final.state == LifecycleState.STOPPED
    assert final.runs == len(fake.capture_inputs) >= 3
    # Every run cancelled its capture before it ended, and each began where creation was.
    assert fake.capture_cancelled == final.runs
    assert {c.start_at for c in fake.capture_inputs} == {fake.capture_inputs[0].start_at}
    assert description.run_id != handle.first_execution_run_id
    for collection in ("orders", "customers"):
        assert_progress_matches(status.progress[f"shop.{collection}"], fake.committed[collection])
        assert final.tables[f"shop.{collection}"] == status.progress[f"shop.{collection}"]

    # The first run handed its counts to the second: nothing was lost and counting went on.
    first_run = client.get_workflow_handle(spec.workflow_id, run_id=handle.first_execution_run_id)
    last_event = (await first_run.fetch_history()).events[-1]
    assert last_event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
    [handed_over] = await DATA_CONVERTER.decode(
        last_event.workflow_execution_continued_as_new_event_attributes.input.payloads,
        [StartPipelineInput],
    )
    assert handed_over.carried is not None
    assert handed_over.carried.runs == 2
    for table, progress in handed_over.carried.tables.items():
        assert 0 < progress.applied < final.tables[table].applied
        assert progress.batches < final.tables[table].batches


# --- activity contracts --------------------------------------------------------------------------


def activity_implementations() -> list[activity._Definition]:
    """Every `@activity.defn` function or method defined in the activities package but contracts."""
    found = []
    for module_info in pkgutil.iter_modules(activities.__path__):
        if module_info.name == "contracts":
            continue
        module = importlib.import_module(f"activities.{module_info.name}")
        for obj in vars(module).values():
            if getattr(obj, "__module__", None) != module.__name__:
                continue  # imported, defined elsewhere
            members = vars(obj).values() if inspect.isclass(obj) else [obj]
            found += [d for m in members if (d := activity._Definition.from_callable(m))]
    return found


async def test_every_activity_stub_has_exactly_one_registered_implementation(env, unique) -> None:
    settings = Settings(task_queue=f"wf-{unique}", io_task_queue=f"io-{unique}")
    with ThreadPoolExecutor(max_workers=settings.io_max_concurrent) as executor:
        workers, pipeline_activities = build_workers(env.client, settings, executor)
        # Start and stop them, so none still talks to the server when the module shuts it down.
        async with AsyncExitStack() as running:
            for worker in workers:
                await running.enter_async_context(worker)
        pipeline_activities.close()
    registered = [
        activity._Definition.must_from_callable(fn)
        for worker in workers
        for fn in worker.config().get("activities", [])
    ]
    stubs = {stub.name: stub for stub in map(activity._Definition.must_from_callable, STUBS)}

    assert Counter(d.name for d in activity_implementations()) == Counter(list(stubs))
    assert Counter(d.name for d in registered) == Counter(list(stubs))
    for real in registered:
        # The worker registers the real activities (bound methods in the activities package),
        # each with its stub's signature.
        assert real.fn.__module__.startswith("activities."), real.name
        assert real.fn.__module__ != "activities.contracts", real.name
        assert real.arg_types == stubs[real.name].arg_types, real.name
        assert real.ret_type == stubs[real.name].ret_type, real.name


# --- re-snapshots and re-syncs ------------------------------------------------------------------


@pytest.fixture(scope="module")
async def update_env() -> AsyncIterator[WorkflowEnvironment]:
    """A dev server with default settings: the time-skipping test server lacks workflow updates."""
    server = await WorkflowEnvironment.start_local(
        data_converter=DATA_CONVERTER,
        dev_server_existing_path=str(venv_bin("temporal")),
        search_attributes=SEARCH_ATTRIBUTE_KEYS,
    )
    try:
        yield server
    finally:
        await server.shutdown()


def sweeps(fake: FakeIO, collection: str = "orders") -> list[str]:
    return [c.sweep_before_seq for c in fake.apply_calls
            if c.collection == collection and c.purge_tombstones]  # fmt: skip


async def test_a_snapshot_sweeps_rows_older_than_its_earliest_read_point(env, unique) -> None:
    fake = FakeIO()
    spec = make_spec(f"p-{unique}", snapshot="initial")
    async with pipeline_workers(env.client, fake, unique) as io_queue:
        handle = await start_pipeline(env.client, spec, unique, io_queue)
        await status_until(
            handle, lambda s: s.progress["shop.orders"].snapshot == "done", "the snapshot done"
        )
        await handle.signal(PipelineWorkflow.stop)
        await result_of(handle)
    # Two ranges read at (0x6000000a, 0) and (0x6000000a, 1): the sweep bound is the earlier.
    assert sweeps(fake) == ["6000000a0000000000000000"]


async def test_resnapshot_copies_the_asked_collection_again_and_sweeps(update_env, unique) -> None:
    fake = FakeIO()
    spec = make_spec(f"p-{unique}", "orders", "payments")
    async with pipeline_workers(update_env.client, fake, unique) as io_queue:
        handle = await start_pipeline(update_env.client, spec, unique, io_queue)
        await status_until(handle, lambda s: s.progress["shop.orders"].batches >= 1, "a batch")
        with pytest.raises(WorkflowUpdateFailedError) as rejected:
            await handle.execute_update(PipelineWorkflow.resnapshot, ["orders", "nope"])
        assert "does not capture nope" in str(rejected.value.cause)

        accepted = await handle.execute_update(PipelineWorkflow.resnapshot, ["orders"])
        assert accepted == ["orders"]
        status = await status_until(
            handle, lambda s: s.progress["shop.orders"].snapshot == "done", "the re-snapshot"
        )
        assert status.progress["shop.orders"].snapshots_started == 1
        assert status.progress["shop.payments"].snapshots_started == 0
        assert status.state == LifecycleState.STREAMING
        # Asking again copies again, under a new child workflow id.
        await handle.execute_update(PipelineWorkflow.resnapshot, [])
        status = await status_until(
            handle,
            lambda s: (
                all(t.snapshot == "done" for t in s.progress.values())
                and s.progress["shop.orders"].snapshots_started == 2
            ),
            "both collections copied",
        )
        await handle.signal(PipelineWorkflow.stop)
        await result_of(handle)
        children = [
            e.start_child_workflow_execution_initiated_event_attributes.workflow_id
            async for e in handle.fetch_history_events()
            if e.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED
        ]
    name = spec.name
    assert children == [f"snapshot:{name}:orders", f"snapshot:{name}:orders:2",
                        f"snapshot:{name}:payments"]  # fmt: skip
    # Each snapshot's sweep uses its own (later) read point.
    assert sweeps(fake) == ["6000000a0000000000000000", "600000140000000000000000"]
    assert sweeps(fake, "payments") == ["6000000a0000000000000000"]
    with pytest.raises(RPCError, match="completed"):  # a stopped pipeline copies nothing
        await handle.execute_update(PipelineWorkflow.resnapshot, [])


@pytest.mark.parametrize(
    ("policy", "mode", "resyncs"),
    [("resnapshot", "never", True), ("fail", "when_needed", True), ("fail", "initial", False)],
)
async def test_lost_resume_point_resyncs_or_fails_as_the_spec_says(
    env, unique, policy, mode, resyncs
) -> None:
    fake = FakeIO()
    fake.first_capture_error = ApplicationError(
        "change stream on shop cannot resume: the oplog rolled over",
        type="HistoryLost",
        non_retryable=True,
    )
    spec = make_spec(f"p-{unique}", snapshot=mode)
    spec = spec.model_copy(
        update={"source": spec.source.model_copy(update={"on_history_lost": policy})}
    )
    async with pipeline_workers(env.client, fake, unique) as io_queue:
        handle = await start_pipeline(env.client, spec, unique, io_queue)
        if not resyncs:
            final = await result_of(handle)
            assert final.state == LifecycleState.FAILED
            assert "HistoryLost" in (final.last_error or "")
            assert fake.resets == 0
            return
        status = await status_until(
            handle,
            lambda s: (
                s.progress["shop.orders"].snapshot == "done" and len(fake.capture_inputs) == 2
            ),
            "re-synced",
        )
        await handle.signal(PipelineWorkflow.stop)
        final = await result_of(handle)
    assert fake.resets == 1
    assert status.state == LifecycleState.STREAMING
    assert "re-sync 1 after" in (status.last_error or "")
    assert "oplog rolled over" in (status.last_error or "")
    assert final.resyncs == 1
    # The new capture starts at the re-sync, after the creation the first one started from.
    first, second = fake.capture_inputs
    assert second.start_at == final.stream_start > first.start_at == final.created_at
    assert final.tables["shop.orders"].snapshots_started == (2 if mode != "never" else 1)


async def test_mode_always_copies_again_on_every_resume(env, unique) -> None:
    fake = FakeIO()
    spec = make_spec(f"p-{unique}", snapshot="always")
    async with pipeline_workers(env.client, fake, unique) as io_queue:
        handle = await start_pipeline(env.client, spec, unique, io_queue)
        await status_until(handle, lambda s: s.progress["shop.orders"].snapshot == "done", "done")
        await handle.signal(PipelineWorkflow.pause)
        await status_until(handle, lambda s: s.state == LifecycleState.PAUSED, "PAUSED")
        await handle.signal(PipelineWorkflow.resume)
        status = await status_until(
            handle,
            lambda s: (
                s.progress["shop.orders"].snapshots_started == 2
                and s.progress["shop.orders"].snapshot == "done"
            ),
            "copied again after the resume",
        )
        await handle.signal(PipelineWorkflow.stop)
        await result_of(handle)
    assert status.state == LifecycleState.STREAMING


# --- maintenance ---------------------------------------------------------------------------------


async def test_tables_are_maintained_each_interval_between_their_batches(env, unique) -> None:
    fake = FakeIO()
    spec = make_spec(f"p-{unique}")
    spec = spec.model_copy(
        update={"maintenance": spec.maintenance.model_copy(update={"interval_minutes": 0.05})}
    )
    async with pipeline_workers(env.client, fake, unique) as io_queue:
        handle = await start_pipeline(env.client, spec, unique, io_queue)
        await status_until(handle, lambda s: s.progress["shop.orders"].batches >= 2, "batches")
        # The interval (3 s) counts from the first batch. The test server cannot skip time while
        # capture runs, so it passes in real time.
        await fake_until(
            lambda: (
                {(m.collection, m.dead_letters) for m, _ in fake.maintained}
                >= {("orders", False), ("orders", True)}
            ),
            "the table and the dead-letter table maintained",
        )
        status = await handle.query(PipelineWorkflow.status)
        await handle.signal(PipelineWorkflow.stop)
        await result_of(handle)
    table_runs = [in_flight for m, in_flight in fake.maintained if not m.dead_letters]
    assert table_runs and all(n == 0 for n in table_runs)  # never beside a batch of its table
    assert status.progress["shop.orders"].maintenance_runs == len(table_runs) >= 1
