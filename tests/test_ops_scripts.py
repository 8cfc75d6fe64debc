"""The operator recipes in scripts/ops/, run as an operator would, against the test stack's
Temporal dev server (its search attributes registered by the stack).

Each test starts a real PipelineWorkflow with the same-name mock activities of
test_pipeline_workflow (no MongoDB, Kafka or Delta needed: the scripts only talk to Temporal).
Once two batches have committed, the mock apply holds the next one in flight, so the history
stays short and still while the scripts work on it. Outcomes are read back independently
through the Temporal client: state by query, runs and their status by describe, events by
history. Visibility (what list reads) is eventually consistent, so list checks poll.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle

from lakeward.settings import StackSettings
from lakeward.tokens import Role
from tests.test_pipeline_workflow import (
    FakeIO,
    make_spec,
    pipeline_workers,
    result_of,
    start_pipeline,
    until,
)
from tests.test_web_ui import serving_codec_api
from workflows.contracts import DATA_CONVERTER, LifecycleState, PipelineState
from workflows.pipeline import PipelineWorkflow
from workflows.spec import PipelineSpec

OPS = Path(__file__).resolve().parent.parent / "scripts" / "ops"


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


async def run_script(
    settings: StackSettings, script: str, *args: str, env: dict[str, str] | None = None
) -> Ran:
    """One script with the operator's environment pointing at the test stack (plus `env`).

    Async on purpose: the workers run on this event loop, and a blocking wait would stall the
    very workflow the script is signalling.
    """
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": settings.temporal_address,
        "TEMPORAL_NAMESPACE": "default",
        **(env or {}),
    }
    process = await asyncio.create_subprocess_exec(
        str(OPS / script),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return Ran(process.returncode, stdout.decode(), stderr.decode())


async def ops(
    settings: StackSettings, script: str, *args: str, env: dict[str, str] | None = None
) -> str:
    """Run a script that must succeed; its standard output."""
    ran = await run_script(settings, script, *args, env=env)
    assert ran.returncode == 0, f"{script} {' '.join(args)} exited {ran.returncode}: {ran.stderr}"
    return ran.stdout


async def ops_until(
    settings: StackSettings, check: Callable[[str], object], what: str, *argv: str
) -> str:
    async def probe() -> str:
        return await ops(settings, *argv)

    # Each probe is a CLI process (tens of milliseconds at least): fewer polls than for queries.
    return await until(probe, check, what, attempts=200)


@dataclass
class Pipeline:
    spec: PipelineSpec
    handle: WorkflowHandle[PipelineWorkflow, PipelineState]
    fake: FakeIO

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def id(self) -> str:
        return self.spec.workflow_id


@pytest.fixture(scope="module")
async def client(temporal: StackSettings) -> Client:
    return await Client.connect(temporal.temporal_address, data_converter=DATA_CONVERTER)


@asynccontextmanager
async def running_pipeline(client: Client, unique: str) -> AsyncIterator[Pipeline]:
    """A streaming pipeline with its workers; ended at exit whatever the test did to it."""
    fake = FakeIO()
    spec = make_spec(f"ops-{unique}")
    async with pipeline_workers(client, fake, unique) as io_queue:
        handle = await start_pipeline(client, spec, unique, io_queue)
        await until(
            lambda: handle.query(PipelineWorkflow.status),
            lambda s: s.progress["shop.orders"].batches >= 2,
            "two committed batches",
        )
        fake.flowing.clear()
        try:
            yield Pipeline(spec, handle, fake)
        finally:
            fake.flowing.set()
            latest = client.get_workflow_handle(spec.workflow_id)
            if (await latest.describe()).status == WorkflowExecutionStatus.RUNNING:
                await latest.terminate("test teardown")


@pytest.fixture
async def pipeline(client: Client, unique: str) -> AsyncIterator[Pipeline]:
    async with running_pipeline(client, unique) as running:
        yield running


async def state_of(pipeline: Pipeline, client: Client) -> LifecycleState:
    latest = client.get_workflow_handle_for(PipelineWorkflow.run, pipeline.id)
    return (await latest.query(PipelineWorkflow.status)).state


async def state_until(pipeline: Pipeline, client: Client, state: LifecycleState) -> LifecycleState:
    return await until(lambda: state_of(pipeline, client), lambda s: s == state, str(state))


def search_attribute(described: dict, name: str) -> object:
    """A search attribute from `describe -o json` (payloads come base64-encoded there)."""
    field = described["workflowExecutionInfo"]["searchAttributes"]["indexedFields"][name]
    return json.loads(base64.b64decode(field["data"]))


async def test_list_pause_resume_and_stop_a_pipeline(temporal, client, pipeline) -> None:
    def listed(output: str) -> bool:
        return pipeline.id in output

    every_filter = ["-s", "STREAMING", "-S", "shop:change_stream", "-p", pipeline.name]
    await ops_until(temporal, listed, "the pipeline listed as streaming",
                    "list-pipelines.sh", *every_filter)  # fmt: skip
    assert not listed(await ops(temporal, "list-pipelines.sh", "-s", "PAUSED"))

    said = await ops(temporal, "signal-pipeline.sh", "pause", pipeline.name)
    assert said.strip() == f"pause sent to {pipeline.id}"
    status = json.loads(await ops(temporal, "pipeline-status.sh", pipeline.name, "-o", "json"))
    assert status["queryResult"][0]["state"] == "PAUSED"
    await ops_until(temporal, listed, "the pipeline listed as paused",
                    "list-pipelines.sh", "-s", "PAUSED")  # fmt: skip
    described = json.loads(await ops(temporal, "describe-pipeline.sh", pipeline.name, "-o", "json"))
    assert described["workflowExecutionInfo"]["status"] == "WORKFLOW_EXECUTION_STATUS_RUNNING"
    assert search_attribute(described, "LakewardPipeline") == pipeline.name
    assert search_attribute(described, "LakewardState") == "PAUSED"
    assert search_attribute(described, "LakewardSource") == "shop:change_stream"

    # A second pause is harmless; then resume.
    await ops(temporal, "signal-pipeline.sh", "pause", pipeline.name)
    await ops(temporal, "signal-pipeline.sh", "resume", pipeline.name)
    await state_until(pipeline, client, LifecycleState.STREAMING)
    await ops_until(temporal, listed, "the pipeline listed as streaming again",
                    "list-pipelines.sh", "-s", "STREAMING")  # fmt: skip

    # The history shows the three signals, in order, with the run's decoded input.
    history = json.loads(await ops(temporal, "pipeline-history.sh", pipeline.name, "-o", "json"))
    events = history["events"]
    signals = [
        e["workflowExecutionSignaledEventAttributes"]["signalName"]
        for e in events
        if e["eventType"] == "EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED"
    ]
    assert signals == ["pause", "pause", "resume"]
    started = events[0]["workflowExecutionStartedEventAttributes"]
    first_input = json.loads(base64.b64decode(started["input"]["payloads"][0]["data"]))
    assert first_input["spec"]["name"] == pipeline.name

    pipeline.fake.flowing.set()  # the batch in flight commits; stop needs no grace period
    await ops(temporal, "signal-pipeline.sh", "stop", pipeline.name)
    assert (await result_of(pipeline.handle)).state == LifecycleState.STOPPED
    await ops_until(temporal, lambda out: not listed(out), "the stopped pipeline off the list",
                    "list-pipelines.sh")  # fmt: skip
    every_run = await ops(temporal, "list-pipelines.sh", "-a", "-p", pipeline.name)
    assert "Completed" in every_run and pipeline.id in every_run


async def reset_to(temporal: StackSettings, pipeline: Pipeline, point: str, reason: str) -> str:
    said = await ops(temporal, "reset-pipeline.sh", pipeline.name, point, reason)
    prefix = f"{pipeline.id} reset to {point}; new run "
    assert said.startswith(prefix), said
    return said.removeprefix(prefix).strip()


async def test_reset_starts_a_new_run_that_keeps_the_pause(temporal, client, pipeline) -> None:
    first_run = (await pipeline.handle.describe()).run_id
    await ops(temporal, "signal-pipeline.sh", "pause", pipeline.name)
    await state_until(pipeline, client, LifecycleState.PAUSED)

    new_run = await reset_to(temporal, pipeline, "last-workflow-task", "ops test: last task")
    assert new_run != first_run
    latest = client.get_workflow_handle(pipeline.id)
    assert (await latest.describe()).run_id == new_run
    old = await client.get_workflow_handle(pipeline.id, run_id=first_run).describe()
    assert old.status == WorkflowExecutionStatus.TERMINATED
    # Signals after the reset point are applied again: the new run is still paused.
    await state_until(pipeline, client, LifecycleState.PAUSED)

    # To an event id: the last workflow task completed before the pause arrived. (Not the very
    # first task: a pause re-applied there reaches the pipeline while it is still CREATED, which
    # ignores pauses; docs/operations.md says so.)
    events = (await latest.fetch_history()).events
    paused_at = next(
        e.event_id
        for e in events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    )
    before_pause = max(
        e.event_id
        for e in events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED and e.event_id < paused_at
    )
    third_run = await reset_to(temporal, pipeline, str(before_pause), "ops test: event id")
    assert third_run not in (first_run, new_run)
    assert (await latest.describe()).run_id == third_run
    third = client.get_workflow_handle(pipeline.id, run_id=third_run)
    replayed = (await third.fetch_history()).events
    reset_marker = next(
        e.workflow_task_failed_event_attributes
        for e in replayed
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
    )
    assert reset_marker.cause == WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_RESET_WORKFLOW
    assert reset_marker.base_run_id == new_run
    assert reset_marker.new_run_id == third_run
    assert "ops test: event id" in reset_marker.failure.message
    await state_until(pipeline, client, LifecycleState.PAUSED)


async def test_terminate_ends_the_pipeline_with_the_reason(temporal, client, pipeline) -> None:
    reason = f"ops test: terminate {pipeline.name}"
    await ops(temporal, "terminate-pipeline.sh", pipeline.name, reason)

    described = await pipeline.handle.describe()
    assert described.status == WorkflowExecutionStatus.TERMINATED
    last = [e async for e in pipeline.handle.fetch_history_events()][-1]
    assert last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED
    assert last.workflow_execution_terminated_event_attributes.reason == reason
    await ops_until(temporal, lambda out: "Terminated" in out, "the terminated run listed",
                    "list-pipelines.sh", "-a", "-p", pipeline.name)  # fmt: skip
    again = await run_script(temporal, "terminate-pipeline.sh", pipeline.name, reason)
    assert again.returncode != 0 and "already completed" in again.stderr


async def test_status_and_history_decode_encrypted_payloads_through_the_api_codec(
    temporal, tmp_path, unique
) -> None:
    async with (
        serving_codec_api(temporal, tmp_path) as api,
        running_pipeline(api.client, unique) as pipeline,
    ):
        await ops(temporal, "signal-pipeline.sh", "pause", pipeline.name)
        await state_until(pipeline, api.client, LifecycleState.PAUSED)

        # Without the codec the CLI shows what Temporal stores: ciphertext.
        sealed = await ops(temporal, "pipeline-status.sh", pipeline.name, "-o", "json")
        assert "PAUSED" not in sealed and pipeline.name not in sealed
        assert base64.b64encode(b"binary/encrypted").decode() in sealed

        viewer, operator = (
            {
                "TEMPORAL_CODEC_ENDPOINT": f"{api.url}/codec",
                "TEMPORAL_CODEC_AUTH": f"Bearer {api.token(role, f'ops-{unique}-{role.value}')}",
            }
            for role in (Role.viewer, Role.operator)
        )

        # Reading history only decodes: a viewer's token does.
        history = json.loads(
            await ops(temporal, "pipeline-history.sh", pipeline.name, "-o", "json", env=viewer)
        )
        started = history["events"][0]["workflowExecutionStartedEventAttributes"]
        [decoded] = started["input"]["payloads"]
        assert base64.b64decode(decoded["metadata"]["encoding"]) == b"json/plain"
        assert json.loads(base64.b64decode(decoded["data"]))["spec"]["name"] == pipeline.name
        # A query encodes its (empty) arguments through the codec first: that takes an operator.
        refused = await run_script(temporal, "pipeline-status.sh", pipeline.name, env=viewer)
        assert refused.returncode != 0 and "needs operator" in refused.stderr
        status = json.loads(
            await ops(
                temporal,
                "pipeline-status.sh",
                pipeline.name,
                "-o",
                "json",
                env=operator,
            )
        )
        assert status["queryResult"][0]["state"] == "PAUSED"
        # Signals too go through the codec when one is set.
        refused = await run_script(
            temporal, "signal-pipeline.sh", "resume", pipeline.name, env=viewer
        )
        assert refused.returncode != 0 and "needs operator" in refused.stderr
        await ops(temporal, "signal-pipeline.sh", "resume", pipeline.name, env=operator)
        await state_until(pipeline, api.client, LifecycleState.STREAMING)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["list-pipelines.sh", "-s", "RUNNING"], "unknown state RUNNING"),
        (["describe-pipeline.sh", "Orders; drop"], "not a pipeline name"),
        (["signal-pipeline.sh", "restart", "orders"], "usage: signal-pipeline.sh"),
        (["reset-pipeline.sh", "orders", "yesterday", "why"], "unknown point yesterday"),
        (["terminate-pipeline.sh", "orders", ""], "a reason is required"),
        (["terminate-pipeline.sh", "orders"], "usage: terminate-pipeline.sh"),
    ],
)
async def test_a_bad_invocation_says_why_and_touches_nothing(argv, message) -> None:
    # No server is involved: the scripts check their arguments before calling Temporal.
    unreachable = StackSettings(temporal_port=1)
    ran = await run_script(unreachable, *argv)
    assert ran.returncode != 0
    assert message in ran.stderr
