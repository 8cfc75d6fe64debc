"""Replay saved PipelineWorkflow histories against today's workflow code.

A change that would break running pipelines (a command added, removed or reordered without a
`workflow.patched` guard) fails here as non-determinism before it reaches a worker. The histories
in `tests/histories/` were recorded from runs with the mock activities of
`tests/test_pipeline_workflow.py`:

- `pipeline_basic.json`: start, a few batches, pause, resume, a few more batches, stop;
- `pipeline_snapshot.json`: the same pipeline with the snapshot stage (a SnapshotWorkflow child);
- `pipeline_resync.json`: a pipeline whose first capture finds its resume point lost and
  re-syncs (`resync-on-history-lost`), with snapshot mode `always`, paused and resumed (the resume
  asks for a copy: `resnapshot-requests`);
- `pipeline_control.json` (recorded on a dev server: the test server has no updates or
  schedules): a pipeline with a reconciliation schedule, reconfigured (a collection added, the
  batch size and the schedule changed) and reconciled on demand (a child that signals back);
- `pipeline_basic_before_snapshot_stage.json`: the basic run recorded before the snapshot stage
  existed; it keeps the `snapshot-stage` patch honest;
- `pipeline_basic_before_resync.json`, `pipeline_snapshot_before_resync.json`: the first two as
  recorded before re-syncs, re-snapshot requests and capture's dead letters existed; they keep
  `resync-on-history-lost`, `resnapshot-requests` and `dead-letter-topic` honest.

Delete a `_before_` history only together with its patches, once no pipeline started before them
is still running. Regenerate the recorded ones (never a `_before_` one) after an intended change
of the recorded runs:

    .venv/bin/python -m tests.test_replay
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner

from lakeward.stack.servers import venv_bin
from tests.test_pipeline_control import (
    FakeReconcileWorkflow,
    changed,
    control_workers,
    dev,  # noqa: F401  (a fixture)
    start_dev_server,
)
from tests.test_pipeline_workflow import (
    FakeIO,
    fake_until,
    make_spec,
    pipeline_workers,
    register_search_attributes,
    result_of,
    start_pipeline,
    status_until,
)
from workers.main import workflow_runner
from workflows.contracts import (
    DATA_CONVERTER,
    PIPELINE_WORKFLOW,
    LifecycleState,
    ReconfigurePipelineInput,
    StartPipelineInput,
    StartReconcileInput,
)
from workflows.pipeline import PipelineWorkflow
from workflows.snapshot import SnapshotWorkflow

HISTORIES = Path(__file__).resolve().parent / "histories"


async def record_basic_history(client: Client, unique: str) -> WorkflowHistory:
    """Start, a few batches, pause, resume, a few more batches, stop."""
    fake = FakeIO()
    async with pipeline_workers(client, fake, unique) as io_queue:
        handle = await start_pipeline(client, make_spec(f"p-{unique}"), unique, io_queue)
        await status_until(handle, lambda s: s.progress["shop.orders"].batches >= 3, "batches")
        await handle.signal(PipelineWorkflow.pause)
        await status_until(handle, lambda s: s.state == LifecycleState.PAUSED, "PAUSED")
        calls_at_pause = len(fake.apply_calls)
        await handle.signal(PipelineWorkflow.resume)
        await fake_until(lambda: len(fake.apply_calls) >= calls_at_pause + 3, "batches")
        await handle.signal(PipelineWorkflow.stop)
        final = await result_of(handle)
    assert final.state == LifecycleState.STOPPED
    return await handle.fetch_history()


async def record_snapshot_history(client: Client, unique: str) -> WorkflowHistory:
    """Start with a snapshot, copy, apply past the snapshot's rows (tombstones purged), stop."""
    fake = FakeIO()
    spec = make_spec(f"p-{unique}", snapshot="initial")
    async with pipeline_workers(client, fake, unique) as io_queue:
        handle = await start_pipeline(client, spec, unique, io_queue)
        await status_until(handle, lambda s: s.progress["shop.orders"].snapshot == "done", "done")
        await handle.signal(PipelineWorkflow.stop)
        final = await result_of(handle)
    assert final.state == LifecycleState.STOPPED
    return await handle.fetch_history()


async def record_resync_history(client: Client, unique: str) -> WorkflowHistory:
    """Lost resume point -> re-sync with a snapshot; pause, resume (mode always copies again)."""
    fake = FakeIO()
    fake.first_capture_error = ApplicationError(
        "resume point gone", type="HistoryLost", non_retryable=True
    )
    spec = make_spec(f"p-{unique}", snapshot="always")
    async with pipeline_workers(client, fake, unique) as io_queue:
        handle = await start_pipeline(client, spec, unique, io_queue)
        await status_until(
            handle,
            lambda s: s.progress["shop.orders"].snapshot == "done" and s.resyncs == 1,
            "re-synced",
        )
        await handle.signal(PipelineWorkflow.pause)
        await status_until(handle, lambda s: s.state == LifecycleState.PAUSED, "PAUSED")
        await handle.signal(PipelineWorkflow.resume)
        await status_until(
            handle,
            lambda s: (
                s.progress["shop.orders"].snapshots_started == 3
                and s.progress["shop.orders"].snapshot == "done"
            ),
            "copied again after the resume",
        )
        await handle.signal(PipelineWorkflow.stop)
        final = await result_of(handle)
    assert final.state == LifecycleState.STOPPED
    return await handle.fetch_history()


async def record_control_history(client: Client, unique: str) -> WorkflowHistory:
    """With a schedule; reconfigured (collection added, batch size and schedule changed),
    reconciled on demand (the child signals `reconciled` back), stopped."""
    fake = FakeIO()
    spec = changed(make_spec(f"p-{unique}"), reconcile__schedule="0 3 * * *")
    async with control_workers(client, fake, unique) as io_queue:
        handle = await start_pipeline(client, spec, unique, io_queue)
        await status_until(handle, lambda s: s.progress["shop.orders"].batches >= 2, "batches")
        new = changed(
            spec,
            source__collections=["orders", "payments"],
            batching__max_records=5000,
            reconcile__schedule="@daily",
        )
        await handle.execute_update(PipelineWorkflow.reconfigure, ReconfigurePipelineInput(new))
        await status_until(handle, lambda s: "shop.payments" in s.progress, "the added collection")
        await handle.execute_update(PipelineWorkflow.reconcile, StartReconcileInput())
        await status_until(handle, lambda s: s.last_reconciliation is not None, "reconciled")
        await fake_until(lambda: len(fake.capture_inputs) == 2, "capture restarted")
        await handle.signal(PipelineWorkflow.stop)
        final = await result_of(handle)
    assert final.state == LifecycleState.STOPPED
    return await handle.fetch_history()


#: The histories `python -m tests.test_replay` records (on the time-skipping test server).
RECORDERS: dict[str, Callable[[Client, str], Awaitable[WorkflowHistory]]] = {
    "pipeline_basic.json": record_basic_history,
    "pipeline_snapshot.json": record_snapshot_history,
    "pipeline_resync.json": record_resync_history,
}
#: ... and on a dev server (updates and schedules).
DEV_RECORDERS: dict[str, Callable[[Client, str], Awaitable[WorkflowHistory]]] = {
    "pipeline_control.json": record_control_history,
}
BEFORE = [
    "pipeline_basic_before_snapshot_stage.json",
    "pipeline_basic_before_resync.json",
    "pipeline_snapshot_before_resync.json",
]


def saved_histories() -> list[Path]:
    return sorted(HISTORIES.glob("*.json"))


def load_history(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(f"replay-{path.stem}", path.read_text())


def replayer() -> Replayer:
    return Replayer(
        workflows=[PipelineWorkflow, SnapshotWorkflow, FakeReconcileWorkflow],
        data_converter=DATA_CONVERTER,
        workflow_runner=workflow_runner(),
    )


async def start_test_server() -> WorkflowEnvironment:
    server = await WorkflowEnvironment.start_time_skipping(
        data_converter=DATA_CONVERTER,
        test_server_existing_path=str(venv_bin("temporal-test-server")),
    )
    await register_search_attributes(server.client)
    return server


@pytest.fixture(scope="module")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    server = await start_test_server()
    try:
        yield server
    finally:
        await server.shutdown()


def event_types(history: WorkflowHistory) -> list[EventType.ValueType]:
    return [event.event_type for event in history.events]


def signal_names(history: WorkflowHistory) -> list[str]:
    return [
        e.workflow_execution_signaled_event_attributes.signal_name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    ]


@pytest.mark.parametrize("name", [*RECORDERS, *DEV_RECORDERS, *BEFORE], ids=str)
def test_the_history_is_saved_and_covers_its_scenario(name: str) -> None:
    path = HISTORIES / name
    assert path.exists(), f"record it: {sys.executable} -m tests.test_replay"
    history = load_history(path)
    types = event_types(history)
    assert types[-1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED
    if name == "pipeline_control.json":
        assert signal_names(history) == ["reconciled", "stop"]
        updates = types.count(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED)
        assert updates == 2
        assert EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED in types
    elif name.startswith("pipeline_snapshot"):
        assert signal_names(history) == ["stop"]
        assert EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED in types
    else:
        assert signal_names(history) == ["pause", "resume", "stop"]
    if name == "pipeline_resync.json":
        assert EventType.EVENT_TYPE_MARKER_RECORDED in types  # the new paths are patched
        assert types.count(EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_COMPLETED) == 3


@pytest.mark.parametrize("path", saved_histories(), ids=lambda p: p.name)
async def test_saved_history_replays_deterministically(path: Path) -> None:
    result = await replayer().replay_workflow(load_history(path))
    assert result.replay_failure is None


@pytest.mark.parametrize("record", RECORDERS.values(), ids=list(RECORDERS))
async def test_a_fresh_run_replays_deterministically(env, unique, record) -> None:
    history = await record(env.client, unique)
    await replayer().replay_workflow(history)


async def test_a_fresh_control_run_replays_deterministically(dev, unique) -> None:  # noqa: F811
    history = await record_control_history(dev.client, unique)
    await replayer().replay_workflow(history)


@workflow.defn(name=PIPELINE_WORKFLOW, sandboxed=False)
class TimerFirstPipelineWorkflow:
    """An incompatible change: waits on a timer where the recorded run started its capture."""

    @workflow.run
    async def run(self, input: StartPipelineInput) -> None:
        await workflow.sleep(timedelta(seconds=1))


async def test_replay_catches_an_incompatible_change() -> None:
    changed = Replayer(
        workflows=[TimerFirstPipelineWorkflow],
        data_converter=DATA_CONVERTER,
        workflow_runner=UnsandboxedWorkflowRunner(),
    )
    with pytest.raises(workflow.NondeterminismError):
        await changed.replay_workflow(load_history(HISTORIES / "pipeline_basic.json"))


async def _record() -> None:
    server = await start_test_server()
    try:
        for name, record in RECORDERS.items():
            history = await record(server.client, uuid.uuid4().hex[:10])
            (HISTORIES / name).write_text(json.dumps(history.to_json_dict(), indent=2) + "\n")
            print(f"wrote {HISTORIES / name} ({len(history.events)} events)")
    finally:
        await server.shutdown()
    server = await start_dev_server()
    try:
        for name, record in DEV_RECORDERS.items():
            history = await record(server.client, uuid.uuid4().hex[:10])
            (HISTORIES / name).write_text(json.dumps(history.to_json_dict(), indent=2) + "\n")
            print(f"wrote {HISTORIES / name} ({len(history.events)} events)")
    finally:
        await server.shutdown()


if __name__ == "__main__":
    asyncio.run(_record())
