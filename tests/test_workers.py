"""`lakeward worker`: task queues and pools, heartbeats from the apply activity's helper thread,
graceful shutdown of a real worker process, Temporal SDK metrics on /metrics, tracing spans."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import typer
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pymongo import MongoClient
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker
from typer.testing import CliRunner

from activities.contracts import APPLY_BATCH, ApplyBatchResult
from activities.pipeline import _heartbeating
from lakeward.cli import serve
from lakeward.settings import Settings, StackSettings
from lakeward.stack.servers import venv_bin
from tests.test_slice import _eventually, _lake_rows
from workers.main import (
    ALL_QUEUES,
    Queue,
    build_workers,
    connect,
    cpu_pool_size,
    parse_queues,
)
from workers.telemetry import tracer_provider
from workflows.contracts import PipelineState, StartPipelineInput
from workflows.pipeline import PipelineWorkflow, search_attributes
from workflows.spec import PipelineSpec

REPO = Path(__file__).resolve().parent.parent


# --- pure -------------------------------------------------------------------------------------


def test_queue_names_parse_and_unknown_ones_are_refused() -> None:
    assert parse_queues("workflow, io") == {Queue.WORKFLOW, Queue.IO}
    assert parse_queues("workflow,io,cpu") == ALL_QUEUES
    with pytest.raises(ValueError, match="use some of workflow, io, cpu"):
        parse_queues("workflow,gpu")
    with pytest.raises(ValueError):
        parse_queues(" , ")


def test_an_unknown_queue_name_is_refused_before_the_worker_starts() -> None:
    app = typer.Typer()
    app.command()(serve.worker)
    result = CliRunner().invoke(app, ["--queues", "workflow,gpu"])
    assert result.exit_code == 2
    assert "--queues" in result.output and "'gpu'" in result.output


def test_tracing_follows_the_exporter_and_ratio_settings() -> None:
    assert tracer_provider(Settings(), "lakeward-worker") is None  # off by default
    otlp = tracer_provider(Settings(traces_exporter="otlp"), "lakeward-worker")
    assert otlp is not None
    otlp.shutdown()  # nothing recorded, so nothing is sent to the (absent) collector
    kept = tracer_provider(Settings(traces_exporter="console"), "lakeward-worker")
    assert kept is not None
    with kept.get_tracer("t").start_as_current_span("kept") as span:
        assert span.is_recording()
    kept.shutdown()
    none = tracer_provider(Settings(traces_exporter="console", traces_sample_ratio=0), "w")
    assert none is not None
    with none.get_tracer("t").start_as_current_span("dropped") as span:
        assert not span.is_recording()
    none.shutdown()


def test_apply_heartbeats_from_a_helper_thread_while_the_batch_runs() -> None:
    """The batch's own thread is busy (a MERGE inside delta-rs): heartbeats must still flow."""
    beats: list[tuple[object, ...]] = []
    enough = threading.Event()

    def on_heartbeat(*details: object) -> None:
        beats.append(details)
        if len(beats) >= 4:
            enough.set()

    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, heartbeat_timeout=timedelta(seconds=2))
    env.on_heartbeat = on_heartbeat

    def busy_batch() -> int:
        with _heartbeating():
            # Blocks this thread the way a long MERGE does; only the helper can beat.
            assert enough.wait(timeout=30), f"only {len(beats)} heartbeats in 30 s"
        return len(beats)

    assert env.run(busy_batch) >= 4
    helpers = [t for t in threading.enumerate() if t.name.startswith("heartbeat-")]
    assert helpers == [], "the helper thread ends with the batch"


# --- helpers shared with test_worker_failover -------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def worker_settings(stack: StackSettings, unique: str, **extra: object) -> Settings:
    return Settings(
        temporal_address=stack.temporal_address,
        kafka_bootstrap=stack.kafka_bootstrap,
        task_queue=f"wf-{unique}",
        io_task_queue=f"io-{unique}",
        cpu_task_queue=f"cpu-{unique}",
        topic_prefix=f"t{unique}",
        **extra,  # type: ignore[arg-type]
    )


@dataclasses.dataclass
class WorkerProcess:
    """A real `lakeward worker` process; its Temporal identity is `<pid>@<host>`."""

    process: subprocess.Popen[bytes]
    log: Path

    @property
    def identity_prefix(self) -> str:
        return f"{self.process.pid}@"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


#: The settings a test's worker and API processes share with the test's own client.
_SHARED_SETTINGS = (
    "temporal_address", "kafka_bootstrap", "task_queue", "io_task_queue", "cpu_task_queue",
    "topic_prefix",
)  # fmt: skip


def _process_env(settings: Settings, names: tuple[str, ...], extra: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKEWARD_")}
    for name in names:
        env[f"LAKEWARD_{name.upper()}"] = str(getattr(settings, name))
    return {**env, **extra}


def start_worker_process(
    settings: Settings, log: Path, *args: str, env: dict[str, str] | None = None
) -> WorkerProcess:
    """A `lakeward worker` with the test's settings (and `env` over them), logging to `log`."""
    names = (*_SHARED_SETTINGS, "worker_metrics_port", "worker_shutdown_grace_s")
    out = log.open("wb")
    process = subprocess.Popen(
        [str(venv_bin("lakeward")), "worker", *args],
        cwd=REPO,  # the same payload key file as the test's own client
        env=_process_env(settings, names, env or {}),
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    out.close()
    return WorkerProcess(process, log)


def start_api_process(
    settings: Settings, port: int, log: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """A `lakeward api` on 127.0.0.1:`port` with the test's settings and `env`, logging to `log`
    (appended: a restarted API keeps the earlier lines)."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(venv_bin("lakeward")), "api", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=_process_env(settings, _SHARED_SETTINGS, env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop_worker_process(worker: WorkerProcess, timeout: float = 90) -> int:
    if worker.process.poll() is None:
        worker.process.send_signal(signal.SIGTERM)
        try:
            worker.process.wait(timeout)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()
    return worker.process.returncode


async def start_pipeline(client: Client, settings: Settings, spec: PipelineSpec) -> WorkflowHandle:
    return await client.start_workflow(
        PipelineWorkflow.run,
        StartPipelineInput(
            spec=spec,
            topic_prefix=settings.topic_prefix,
            io_task_queue=settings.io_task_queue,
            cpu_task_queue=settings.cpu_task_queue,
        ),
        id=spec.workflow_id,
        task_queue=settings.task_queue,
        search_attributes=search_attributes(PipelineState(spec=spec)),
    )


async def end_pipeline(handle: WorkflowHandle) -> None:
    """Terminate: a capture activity left running would hold a worker's graceful shutdown."""
    with contextlib.suppress(RPCError):
        if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
            await handle.terminate("test over")


def pipeline_spec(stack: StackSettings, unique: str, lake: Path, **extra: object) -> PipelineSpec:
    return PipelineSpec.model_validate(
        {
            "name": f"w-{unique}",
            "source": {
                "uri": stack.mongo_uri,
                "database": f"w_{unique}",
                "collections": ["orders"],
            },
            "sink": {"uri": str(lake)},
            **extra,
        }
    )


async def started_applies(handle: WorkflowHandle) -> list[tuple[str, int, str]]:
    """(identity, attempt, activity id) of every apply_batch start the history records."""
    scheduled: dict[int, str] = {}
    started: list[tuple[str, int, str]] = []
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = event.activity_task_scheduled_event_attributes
            if attrs.activity_type.name == APPLY_BATCH:
                scheduled[event.event_id] = attrs.activity_id
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            s = event.activity_task_started_event_attributes
            if s.scheduled_event_id in scheduled:
                started.append((s.identity, s.attempt, scheduled[s.scheduled_event_id]))
    return started


async def running_apply(handle: WorkflowHandle, identity_prefix: str = "") -> str | None:
    """The activity id of an apply_batch running now (on that worker, if given)."""
    description = await handle.describe()
    for pending in description.raw_description.pending_activities:
        if (
            pending.activity_type.name == APPLY_BATCH
            and pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
            and pending.last_worker_identity.startswith(identity_prefix)
        ):
            return pending.activity_id
    return None


async def apply_outcome(
    client: Client, handle: WorkflowHandle, activity_id: str
) -> tuple[str, object, float]:
    """How the apply_batch with this id ended, and when (epoch seconds): ("completed",
    ApplyBatchResult, t), or the name of its closing event, the event and t."""
    scheduled_id = None
    async for event in handle.fetch_history_events():
        at = event.event_time.ToMicroseconds() / 1e6
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            if event.activity_task_scheduled_event_attributes.activity_id == activity_id:
                scheduled_id = event.event_id
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            done = event.activity_task_completed_event_attributes
            if done.scheduled_event_id == scheduled_id:
                [result] = await client.data_converter.decode(
                    done.result.payloads, [ApplyBatchResult]
                )
                return "completed", result, at
        elif event.event_type in (
            EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED,
            EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT,
            EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED,
        ):
            return EventType.Name(event.event_type), event, at
    return "open", None, 0.0


@contextlib.asynccontextmanager
async def in_process_workers(client: Client, settings: Settings) -> AsyncIterator[None]:
    """The same workers `lakeward worker` runs, in this process (no start-up cost)."""
    with ThreadPoolExecutor(settings.io_max_concurrent) as executor:
        workers, activities = build_workers(client, settings, executor)
        runs = [asyncio.create_task(w.run()) for w in workers]
        try:
            yield
        finally:
            await asyncio.gather(*(w.shutdown() for w in workers))
            await asyncio.gather(*runs, return_exceptions=True)
            activities.close()


def mongo_documents(stack: StackSettings, db: str) -> dict[str, dict]:
    with MongoClient(stack.mongo_uri) as mongo:
        return {str(doc["_id"]): doc for doc in mongo[db].orders.find()}


# --- real servers -------------------------------------------------------------------------------


@pytest.fixture
async def client(core_stack) -> AsyncIterator[Client]:
    # The worker's own client setup (data converter included), so results decode here.
    yield await connect(Settings(temporal_address=core_stack.temporal_address))


async def test_a_worker_polls_only_the_queues_asked_for(client, unique) -> None:
    def queues_polled(name: str, queues: frozenset[Queue]) -> list[str]:
        # One worker per task queue per client: each case gets its own names.
        settings = Settings(task_queue=f"wf-{name}", io_task_queue=f"io-{name}",
                            cpu_task_queue=f"cpu-{name}")  # fmt: skip
        with ThreadPoolExecutor(16) as io, ThreadPoolExecutor(cpu_pool_size(settings)) as cpu:
            workers, activities = build_workers(client, settings, io, cpu, queues=queues)
            activities.close()
        return [w.task_queue.split("-")[0] for w in workers]

    assert queues_polled(f"a{unique}", ALL_QUEUES) == ["wf", "io", "cpu"]
    assert queues_polled(f"b{unique}", frozenset({Queue.IO})) == ["io"]
    assert queues_polled(f"c{unique}", frozenset({Queue.CPU, Queue.WORKFLOW})) == ["wf", "cpu"]


@activity.defn(name="test_pool_thread")
def _pool_thread() -> str:
    return threading.current_thread().name


@workflow.defn(name="test-cpu-pool")
class _CpuPoolWorkflow:
    @workflow.run
    async def run(self, cpu_task_queue: str) -> str:
        return await workflow.execute_activity(
            _pool_thread, task_queue=cpu_task_queue, start_to_close_timeout=timedelta(seconds=30)
        )


async def test_cpu_activities_run_in_their_own_pool_on_their_own_queue(client, unique) -> None:
    settings = Settings(io_task_queue=f"io-{unique}", cpu_task_queue=f"cpu-{unique}")
    io = ThreadPoolExecutor(2, thread_name_prefix="lakeward-io")
    cpu = ThreadPoolExecutor(cpu_pool_size(settings), thread_name_prefix="lakeward-cpu")
    workers, activities = build_workers(
        client, settings, io, cpu, queues={Queue.CPU}, extra_cpu_activities=[_pool_thread]
    )
    assert [w.task_queue for w in workers] == [f"cpu-{unique}"]
    try:
        async with contextlib.AsyncExitStack() as running:
            # The test's own workflow, unsandboxed: this module imports non-workflow code.
            caller = Worker(client, task_queue=f"wf-{unique}", workflows=[_CpuPoolWorkflow],
                            workflow_runner=UnsandboxedWorkflowRunner())  # fmt: skip
            for worker in [*workers, caller]:
                await running.enter_async_context(worker)
            thread = await client.execute_workflow(
                _CpuPoolWorkflow.run, f"cpu-{unique}", id=f"cpu-{unique}", task_queue=f"wf-{unique}"
            )
        assert thread.startswith("lakeward-cpu")
    finally:
        activities.close()
        io.shutdown()
        cpu.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(900)  # a real worker process; slow to start on a loaded machine
async def test_worker_serves_sdk_metrics_and_lets_the_batch_in_flight_commit_on_sigterm(
    client, core_stack, unique, tmp_path
) -> None:
    metrics_port = free_port()
    settings = worker_settings(
        core_stack, unique, worker_metrics_port=metrics_port, worker_shutdown_grace_s=30
    )
    worker = start_worker_process(settings, tmp_path / "worker.log")
    spec = pipeline_spec(core_stack, unique, tmp_path / "lake")
    table_uri = spec.sink.table_uri(spec.source.database, "orders")
    handle = await start_pipeline(client, settings, spec)
    try:
        # One endpoint, both kinds of metrics: the process's and Temporal's SDK (Core) ones.
        def scrape() -> str:
            try:
                text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
            except httpx.HTTPError:
                return ""
            return text if "temporal_worker_task_slots_available" in text else ""

        text = str(await _eventually(scrape, timeout=300))
        assert "process_cpu_seconds_total" in text
        assert f'task_queue="io-{unique}"' in text

        with MongoClient(core_stack.mongo_uri) as mongo:
            orders = mongo[spec.source.database].orders
            orders.insert_one({"_id": "probe"})
            await _eventually(lambda: "probe" in _lake_rows(table_uri), timeout=300)
            # A backlog, so the batch in flight at SIGTERM has rows to commit.
            for start in range(0, 10_000, 2000):
                orders.insert_many([{"_id": f"o{i}", "n": i} for i in range(start, start + 2000)])
        expected = mongo_documents(core_stack, spec.source.database)

        async def in_flight() -> str | None:
            if len(_lake_rows(table_uri)) >= len(expected):
                raise AssertionError("the backlog drained before a batch was caught in flight")
            return await running_apply(handle)

        deadline = time.monotonic() + 120
        while (activity_id := await in_flight()) is None:
            assert time.monotonic() < deadline, "no apply_batch ever seen running"
            await asyncio.sleep(0.05)
        worker.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(worker.process.wait, 120)
        assert code == 0, worker.log_text()[-3000:]
        # Capture never ends on its own: it gave way at the shutdown (to be retried elsewhere)
        # instead of holding the worker for the whole grace period.
        pending = (await handle.describe()).raw_description.pending_activities
        capture = [p for p in pending if p.activity_type.name == "capture_changes"]
        assert capture, pending
        assert capture[0].last_failure.application_failure_info.type == "WorkerShutdown"

        how, result, _ = await apply_outcome(client, handle, activity_id)
        assert how == "completed", (how, result)
        assert isinstance(result, ApplyBatchResult)
        assert result.records > 0 and result.delta_version is not None, result

        # Nothing lost across the shutdown: a new worker takes over and the lake catches up.
        async with in_process_workers(client, settings):
            try:
                await _eventually(lambda: _lake_rows(table_uri) == expected, timeout=400)
            finally:
                await end_pipeline(handle)
    finally:
        await end_pipeline(handle)
        stop_worker_process(worker)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_workflow_and_activity_spans_are_linked(core_stack, unique, tmp_path) -> None:
    """A pipeline's start, its workflow run, its activities and its child workflow: one trace,
    linked parent to child."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    settings = worker_settings(core_stack, unique)
    client = await connect(settings, tracing=provider)
    spec = pipeline_spec(core_stack, unique, tmp_path / "lake")

    def spans_by_name() -> dict[str, list[ReadableSpan]]:
        spans: dict[str, list[ReadableSpan]] = {}
        for span in exporter.get_finished_spans():
            spans.setdefault(span.name, []).append(span)
        return spans

    async with in_process_workers(client, settings):
        handle = await start_pipeline(client, settings, spec)
        try:
            wanted = {f"RunActivity:{APPLY_BATCH}", "RunWorkflow:SnapshotWorkflow"}
            await _eventually(lambda: wanted <= spans_by_name().keys(), 240)
        finally:
            await end_pipeline(handle)
    spans = spans_by_name()
    by_id = {s.context.span_id: s for ss in spans.values() for s in ss}

    def parent(span: ReadableSpan) -> ReadableSpan:
        assert span.parent is not None, f"{span.name} has no parent"
        return by_id[span.parent.span_id]

    # TracingInterceptor's shape: the workflow's spans (its run, the activities and children
    # it starts) hang off the span that started it; each activity run off its start.
    [start] = spans["StartWorkflow:PipelineWorkflow"]
    assert parent(spans["RunWorkflow:PipelineWorkflow"][0]) is start
    run_apply = spans[f"RunActivity:{APPLY_BATCH}"][0]
    start_apply = parent(run_apply)
    assert start_apply.name == f"StartActivity:{APPLY_BATCH}"
    assert parent(start_apply) is start
    run_capture = spans["RunActivity:capture_changes"][0]
    assert parent(parent(run_capture)) is start
    run_snapshot = spans["RunWorkflow:SnapshotWorkflow"][0]
    assert parent(run_snapshot).name == "StartChildWorkflow:SnapshotWorkflow"
    # Temporal's spans (named <Kind>:<name>); each micro-batch is a trace of its own
    # (tests/test_tracing.py).
    temporal_spans = [s for s in by_id.values() if ":" in s.name]
    assert {span.context.trace_id for span in temporal_spans} == {start.context.trace_id}
