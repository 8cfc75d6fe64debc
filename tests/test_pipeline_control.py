"""The pipeline's control plane: the `reconfigure` and `reconcile` updates, the `reconciled`
signal and the reconciliation Schedule, on a dev server (the time-skipping test server has no
updates or schedules) with the same-name mock activities of test_pipeline_workflow.

The Schedule tests use the real `sync_schedule` activity against the dev server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from activities.schedules import ScheduleActivities, schedule_id, schedule_note
from lakeward.stack.servers import venv_bin
from tests.test_pipeline_workflow import (
    SEARCH_ATTRIBUTE_KEYS,
    FakeIO,
    fake_until,
    make_spec,
    pipeline_workers,
    result_of,
    start_pipeline,
    status_until,
)
from workflows.contracts import (
    DATA_CONVERTER,
    PIPELINE_KEY,
    RECONCILE_WORKFLOW,
    LifecycleState,
    ReconcileInput,
    ReconcileSummary,
    ReconfigurePipelineInput,
    StartPipelineInput,
    StartReconcileInput,
)
from workflows.pipeline import PipelineWorkflow
from workflows.spec import PipelineSpec


@workflow.defn(name=RECONCILE_WORKFLOW, sandboxed=False)  # a test double, in a test module
class FakeReconcileWorkflow:
    """Stands in for the real reconciliation: reports a fixed outcome back to its pipeline."""

    @workflow.run
    async def run(self, input: ReconcileInput) -> ReconcileSummary:
        summary = ReconcileSummary(
            id=workflow.info().workflow_id,
            outcome="differences" if input.repair is False else "repaired",
            documents=len(input.collections) * 100,
            missing=1,
        )
        pipeline = workflow.get_external_workflow_handle(f"pipeline:{input.spec.name}")
        await pipeline.signal("reconciled", summary)
        return summary


async def start_dev_server() -> WorkflowEnvironment:
    return await WorkflowEnvironment.start_local(
        data_converter=DATA_CONVERTER,
        dev_server_existing_path=str(venv_bin("temporal")),
        search_attributes=SEARCH_ATTRIBUTE_KEYS,
    )


@pytest.fixture(scope="module")
async def dev() -> AsyncIterator[WorkflowEnvironment]:
    server = await start_dev_server()
    try:
        yield server
    finally:
        await server.shutdown()


def control_workers(client: Client, fake: FakeIO, unique: str):
    """The pipeline's workers with the reconciliation double and the real Schedule activity."""
    return pipeline_workers(
        client,
        fake,
        unique,
        workflows=[FakeReconcileWorkflow],
        activities=[ScheduleActivities(client).sync_schedule],
    )


async def streaming(client: Client, spec: PipelineSpec, unique: str, io_queue: str):
    """The pipeline started, once its first batch is committed."""
    handle = await start_pipeline(client, spec, unique, io_queue)
    table = next(iter(spec.tables()), None)
    if table is not None:
        await status_until(handle, lambda s: s.progress[table].batches >= 1, "a batch")
    return handle


def changed(spec: PipelineSpec, **updates: object) -> PipelineSpec:
    """The spec with dotted-path updates, validated as the API would."""
    data = spec.model_dump(mode="json")
    for path, value in updates.items():
        *parents, leaf = path.split("__")
        node = data
        for part in parents:
            node = node[part]
        node[leaf] = value
    return PipelineSpec.model_validate(data)


async def update_events(client: Client, workflow_id: str) -> int:
    """Updates that reached the history (accepted); a validator's rejection leaves none."""
    handle = client.get_workflow_handle(workflow_id)
    events = [e.event_type async for e in handle.fetch_history_events()]
    return events.count(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED)


async def test_reconfigure_takes_new_settings_and_collections_without_a_restart(dev, unique):
    fake = FakeIO()
    spec = make_spec(f"p-{unique}", "orders", "customers")
    async with control_workers(dev.client, fake, unique) as io_queue:
        handle = await streaming(dev.client, spec, unique, io_queue)
        new = changed(
            spec,
            batching__max_records=5000,
            schema_policy="strict",
            source__collections=["orders", "payments"],
        )
        result = await handle.execute_update(
            PipelineWorkflow.reconfigure, ReconfigurePipelineInput(spec=new)
        )
        assert result.added == ["payments"] and result.removed == ["customers"]
        assert set(result.changed) == {
            "batching.max_records",
            "schema_policy",
            "source.collections",
        }
        status = await status_until(
            handle, lambda s: s.progress.get("shop.payments", None) is not None, "payments"
        )
        assert set(status.tables) == {"shop.orders", "shop.payments"}
        assert status.spec == new and status.reconfigurations == 1
        # Capture restarts with the new source; apply takes the new spec at its next batch.
        await fake_until(lambda: len(fake.capture_inputs) == 2, "capture restarted")
        assert fake.capture_inputs[1].spec == new
        await fake_until(
            lambda: any(c.collection == "payments" for c in fake.apply_calls), "payments applied"
        )
        calls_before = len(fake.apply_calls)
        await fake_until(lambda: len(fake.apply_calls) > calls_before + 2, "more batches")
        later = fake.apply_calls[calls_before:]
        assert {c.collection for c in later} == {"orders", "payments"}
        assert all(c.spec.batching.max_records == 5000 for c in later)

        # The same spec again changes nothing and restarts nothing.
        again = await handle.execute_update(
            PipelineWorkflow.reconfigure, ReconfigurePipelineInput(spec=new)
        )
        assert again.changed == [] and len(fake.capture_inputs) == 2
        await handle.signal(PipelineWorkflow.stop)
        final = await result_of(handle)
    assert final.state == LifecycleState.STOPPED and final.reconfigurations == 1


@pytest.mark.parametrize(
    ("updates", "message"),
    [
        ({"name": "other"}, "the name cannot change"),
        ({"source__database": "crm"}, "source.database cannot change"),
        ({"source__capture": "oplog"}, "source.capture cannot change"),
        ({"sink__uri": "/tmp/elsewhere"}, "sink.uri cannot change"),
    ],
)
async def test_reconfigure_refuses_what_would_make_another_pipeline(dev, unique, updates, message):
    fake = FakeIO()
    spec = make_spec(f"p-{unique}")
    async with control_workers(dev.client, fake, unique) as io_queue:
        handle = await streaming(dev.client, spec, unique, io_queue)
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(
                PipelineWorkflow.reconfigure,
                ReconfigurePipelineInput(spec=changed(spec, **updates)),
            )
        assert message in str(refused.value.cause)
        status = await handle.query(PipelineWorkflow.status)
        assert status.spec == spec and status.reconfigurations == 0
        # Rejected by the validator: nothing reached the history.
        assert await update_events(dev.client, spec.workflow_id) == 0
        await handle.signal(PipelineWorkflow.stop)
        await result_of(handle)


async def test_reconfigure_of_a_stopping_pipeline_is_refused(dev, unique):
    fake = FakeIO()
    spec = make_spec(f"p-{unique}")
    async with control_workers(dev.client, fake, unique) as io_queue:
        handle = await streaming(dev.client, spec, unique, io_queue)
        fake.flowing.clear()  # hold the batch in flight, so the pipeline is still stopping
        await fake_until(lambda: fake.in_flight > 0, "a batch in flight")
        await handle.signal(PipelineWorkflow.stop)
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(
                PipelineWorkflow.reconfigure,
                ReconfigurePipelineInput(spec=changed(spec, batching__max_records=10)),
            )
        assert "is stopping" in str(refused.value.cause)
        fake.flowing.set()
        await result_of(handle)


async def test_reconcile_starts_a_child_that_reports_back(dev, unique):
    fake = FakeIO()
    spec = make_spec(f"p-{unique}", "orders", "customers")
    async with control_workers(dev.client, fake, unique) as io_queue:
        handle = await start_pipeline(dev.client, spec, unique, io_queue)
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(
                PipelineWorkflow.reconcile, StartReconcileInput(collections=["nope"])
            )
        assert "does not capture nope" in str(refused.value.cause)
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(PipelineWorkflow.reconcile, StartReconcileInput(mode="x"))

        started = await handle.execute_update(
            PipelineWorkflow.reconcile, StartReconcileInput(repair=False)
        )
        assert started.id == f"reconcile:{spec.name}:1"
        assert started.collections == ["orders", "customers"]
        status = await status_until(
            handle, lambda s: s.last_reconciliation is not None, "the run's summary"
        )
        assert status.last_reconciliation == ReconcileSummary(
            id=started.id, outcome="differences", documents=200, missing=1
        )
        child = dev.client.get_workflow_handle(started.id)
        description = await child.describe()
        assert description.typed_search_attributes.get(PIPELINE_KEY) == spec.name
        # The second run gets its own id.
        second = await handle.execute_update(
            PipelineWorkflow.reconcile, StartReconcileInput(collections=["orders"])
        )
        assert second.id == f"reconcile:{spec.name}:2" and second.collections == ["orders"]
        await handle.signal(PipelineWorkflow.stop)
        await result_of(handle)


async def schedule_cron(client: Client, pipeline: str) -> str | None:
    """The cron the pipeline's Schedule was last given (None: no Schedule)."""
    try:
        description = await client.get_schedule_handle(schedule_id(pipeline)).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    assert description.schedule.spec.calendars or description.schedule.spec.cron_expressions
    return description.schedule.state.note


async def test_the_reconciliation_schedule_follows_the_spec(dev, unique):
    fake = FakeIO()
    spec = changed(make_spec(f"p-{unique}"), reconcile__schedule="0 3 * * *")
    client = dev.client
    async with control_workers(client, fake, unique) as io_queue:
        handle = await start_pipeline(client, spec, unique, io_queue)

        async def cron() -> str | None:
            return await schedule_cron(client, spec.name)

        await until_value(cron, schedule_note("0 3 * * *"))
        description = await client.get_schedule_handle(schedule_id(spec.name)).describe()
        action = description.schedule.action
        assert action.workflow == RECONCILE_WORKFLOW and action.task_queue == f"wf-{unique}"

        # A spec that does not validate (sent raw, past the client's own model) is refused
        # before it reaches the history.
        bad = spec.model_dump(mode="json")
        bad["reconcile"]["schedule"] = "daily"
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update("reconfigure", {"spec": bad})
        assert await update_events(client, spec.workflow_id) == 0
        await handle.execute_update(
            PipelineWorkflow.reconfigure,
            ReconfigurePipelineInput(spec=changed(spec, reconcile__schedule="@hourly")),
        )
        await until_value(cron, schedule_note("@hourly"))
        await handle.signal(PipelineWorkflow.stop)
        await result_of(handle)
    assert await cron() is None  # a stopped pipeline is not reconciled on a schedule


async def until_value(probe, expected, attempts: int = 400) -> None:
    value = None
    for _ in range(attempts):
        value = await probe()
        if value == expected:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"never saw {expected!r}; last value: {value!r}")


async def test_a_whole_database_pipeline_adds_collections_as_they_appear(dev, unique):
    fake = FakeIO()
    spec = changed(
        make_spec(f"p-{unique}", snapshot="initial"),
        source__collections=[],
        source__discovery_interval_s=1,
    )
    async with control_workers(dev.client, fake, unique) as io_queue:
        handle = await start_pipeline(dev.client, spec, unique, io_queue)
        status = await status_until(
            handle,
            lambda s: all(t.snapshot == "done" for t in s.progress.values()) and s.progress,
            "the found collections copied",
        )
        assert set(status.tables) == {"shop.customers", "shop.orders"}
        assert status.spec == spec  # shown as written: every collection
        assert fake.capture_inputs[0].spec.source.collections == ["customers", "orders"]

        fake.collections_found.append("payments")
        status = await status_until(
            handle,
            lambda s: s.progress.get("shop.payments") and s.progress["shop.payments"].batches,
            "the new collection applied",
        )
        assert status.progress["shop.payments"].snapshots_started == 1
        await fake_until(lambda: len(fake.capture_inputs) == 2, "capture restarted")
        assert fake.capture_inputs[1].spec.source.collections == ["customers", "orders", "payments"]

        # A reconfiguration that keeps "every collection" keeps what was found.
        result = await handle.execute_update(
            PipelineWorkflow.reconfigure,
            ReconfigurePipelineInput(spec=changed(spec, batching__max_records=2000)),
        )
        assert result.changed == ["batching.max_records"] and not result.removed
        await handle.signal(PipelineWorkflow.stop)
        final = await result_of(handle)
    assert set(final.tables) == {"shop.customers", "shop.orders", "shop.payments"}


async def test_a_pause_sent_with_the_start_holds_from_the_first_task(dev, unique):
    fake = FakeIO()
    spec = make_spec(f"p-{unique}")
    async with control_workers(dev.client, fake, unique) as io_queue:
        handle = await dev.client.start_workflow(
            PipelineWorkflow.run,
            StartPipelineInput(spec=spec, io_task_queue=io_queue),
            id=spec.workflow_id,
            task_queue=f"wf-{unique}",
            start_signal="pause",  # signal-with-start: handled before the run's first line
        )
        await status_until(handle, lambda s: s.state == LifecycleState.PAUSED, "PAUSED")
        await fake_until(lambda: len(fake.capture_inputs) == 1, "capture running")
        assert fake.apply_calls == []  # capture reads on; nothing is applied
        await handle.signal(PipelineWorkflow.resume)
        await status_until(handle, lambda s: s.progress["shop.orders"].batches >= 1, "a batch")
        await handle.signal(PipelineWorkflow.stop)
        await result_of(handle)
