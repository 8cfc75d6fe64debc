"""`lakeward worker`: the workflow task queue, the I/O activity task queue and the CPU activity
task queue, each with its own bound (docs/workers.md)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from enum import StrEnum
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import start_http_server
from temporalio.client import Client, Interceptor
from temporalio.runtime import Runtime
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.discovery import discover_collections
from activities.maintenance import MaintenanceActivities
from activities.pipeline import PipelineActivities
from activities.reconcile import ReconcileActivities
from activities.resilience import ResilienceInterceptor, breaker_policy, pipeline_cap
from activities.schedules import ScheduleActivities
from activities.snapshot import SnapshotActivities
from api.temporal import connect_client
from lakeward import vault
from lakeward.metrics import set_build_info
from lakeward.mongo.clients import shared_clients
from lakeward.resilience import BREAKERS, Bulkhead
from lakeward.settings import Settings
from lakeward.tracing import install
from workers.encryption import encrypted_data_converter
from workers.log_context import LogContextInterceptor
from workers.pools import PoolUsage
from workers.telemetry import sdk_metrics_runtime, tracer_provider, tracing_interceptor
from workflows.pipeline import PipelineWorkflow
from workflows.reconcile import ReconcileWorkflow
from workflows.snapshot import SnapshotWorkflow

__all__ = [
    "ALL_QUEUES",
    "Queue",
    "build_workers",
    "connect",
    "cpu_pool_size",
    "parse_queues",
    "run_worker",
    "workflow_runner",
]

_log = logging.getLogger("lakeward.worker")


class Queue(StrEnum):
    """The task queues a worker process can poll (`--queues`, LAKEWARD_WORKER_QUEUES)."""

    WORKFLOW = "workflow"
    IO = "io"
    CPU = "cpu"


ALL_QUEUES = frozenset(Queue)


def parse_queues(text: str) -> frozenset[Queue]:
    """`"workflow,io"` -> {WORKFLOW, IO}; an unknown name is an error that lists the known ones."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in Queue._value2member_map_]
    if unknown or not names:
        known = ", ".join(q.value for q in Queue)
        raise ValueError(f"unknown task queue name(s) {unknown or [text]}: use some of {known}")
    return frozenset(Queue(name) for name in names)


def cpu_pool_size(settings: Settings) -> int:
    return settings.cpu_max_concurrent or os.cpu_count() or 1


async def connect(
    settings: Settings,
    *,
    runtime: Runtime | None = None,
    tracing: TracerProvider | None = None,
    service_name: str = "lakeward-worker",
) -> Client:
    """A Temporal client with Lakeward's data converter and, when tracing is on (the settings,
    or `tracing` given), the OpenTelemetry interceptor; workers built from it trace too."""
    provider = tracing or tracer_provider(settings, service_name)
    install(provider)  # the engine's batch spans go where the interceptor's go
    interceptors: list[Interceptor] = [tracing_interceptor(provider)] if provider else []
    return await connect_client(
        settings,
        data_converter=encrypted_data_converter(settings),
        interceptors=interceptors,
        runtime=runtime,
    )


def workflow_runner() -> SandboxedWorkflowRunner:
    # pydantic and the spec are pure; passing them through keeps the sandbox fast and lets
    # workflow and activity code share the same model classes.
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules(
            "pydantic", "pydantic_core", "workflows.spec", "annotated_types"
        )
    )


def build_workers(
    client: Client,
    settings: Settings,
    executor: ThreadPoolExecutor,
    cpu_executor: ThreadPoolExecutor | None = None,
    *,
    queues: Iterable[Queue] = ALL_QUEUES,
    extra_cpu_activities: Iterable[Callable[..., Any]] = (),
) -> tuple[list[Worker], PipelineActivities]:
    """One Temporal worker per task queue asked for, each with its own bound (the bulkhead):
    workflows; I/O activities in `executor`; CPU-heavy activities in `cpu_executor` (when no
    CPU executor is given, as in tests, they share `executor`). `extra_cpu_activities`
    go beside the registered CPU activities (tests)."""
    queues = frozenset(queues)
    vault.configure(settings)  # vault: references resolve with this process's settings
    activities = PipelineActivities(settings)
    snapshot = SnapshotActivities(settings)
    maintenance = MaintenanceActivities(settings)
    reconcile = ReconcileActivities(settings)
    io_activities: list[Callable[..., Any]] = [
        activities.capture_changes,
        activities.apply_batch,
        activities.apply_dead_letters,
        activities.release_capture,
        activities.reset_capture,
        snapshot.plan_snapshot,
        snapshot.copy_snapshot_range,
        maintenance.maintain_table,
        ScheduleActivities(client).sync_schedule,
        discover_collections,
        reconcile.plan_reconcile,
        reconcile.verify_reconcile_keys,
        reconcile.repair_reconcile_keys,
        reconcile.write_reconcile_report,
    ]
    # CPU-heavy activities (reconciliation hashing): add each one here, one line each. They run
    # on settings.cpu_task_queue in their own pool, so hashing never takes a slot apply needs.
    cpu_activities: list[Callable[..., Any]] = [
        reconcile.hash_source_range,
        reconcile.hash_lake_range,
        reconcile.find_reconcile_candidates,
        *extra_cpu_activities,  # tests add theirs
    ]

    # Breakers per dependency for the whole process; the per-pipeline cap on the I/O pool.
    BREAKERS.configure(breaker_policy(settings))
    io_guard = ResilienceInterceptor(Bulkhead(pipeline_cap(settings)))
    workers: list[Worker] = []
    if Queue.WORKFLOW in queues:
        workers.append(
            Worker(
                client,
                task_queue=settings.task_queue,
                workflows=[PipelineWorkflow, SnapshotWorkflow, ReconcileWorkflow],
                workflow_runner=workflow_runner(),
            )
        )
    grace = timedelta(seconds=settings.worker_shutdown_grace_s)
    if Queue.IO in queues:
        workers.append(
            Worker(
                client,
                task_queue=settings.io_task_queue,
                activities=io_activities,
                activity_executor=executor,
                max_concurrent_activities=settings.io_max_concurrent,
                interceptors=[
                    PoolUsage(Queue.IO, settings.io_max_concurrent),
                    io_guard,
                    LogContextInterceptor(),
                ],
                # Lets the micro-batch in flight finish on SIGTERM before the worker exits.
                graceful_shutdown_timeout=grace,
                # Cancellation reaches capture through heartbeats; the default throttle (0.8 x
                # the 30 s heartbeat timeout) would make a stop wait up to 24 s for capture.
                max_heartbeat_throttle_interval=timedelta(seconds=2),
            )
        )
    # A Temporal worker needs at least one activity: no CPU worker until one is registered.
    if Queue.CPU in queues and cpu_activities:
        workers.append(
            Worker(
                client,
                task_queue=settings.cpu_task_queue,
                activities=cpu_activities,
                activity_executor=cpu_executor or executor,
                max_concurrent_activities=cpu_pool_size(settings),
                # Breakers only: the CPU pool has no per-pipeline cap (it is its own bulkhead).
                interceptors=[
                    PoolUsage(Queue.CPU, cpu_pool_size(settings)),
                    ResilienceInterceptor(),
                    LogContextInterceptor(),
                ],
                graceful_shutdown_timeout=grace,
                max_heartbeat_throttle_interval=timedelta(seconds=2),
            )
        )
    return workers, activities


async def run_worker(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, then let the activities in flight finish (up to
    worker_shutdown_grace_s) and exit; a worker that fails ends the process with its error."""
    queues = parse_queues(settings.worker_queues)
    runtime: Runtime | None = None
    if settings.worker_metrics_port:
        set_build_info("worker")
        runtime, sdk_url = sdk_metrics_runtime(settings)
        start_http_server(settings.worker_metrics_port, settings.worker_metrics_host)
        _log.info("metrics on %s:%s/metrics (Temporal SDK metrics from %s merged in)",
                  settings.worker_metrics_host, settings.worker_metrics_port, sdk_url)  # fmt: skip
    client = await connect(settings, runtime=runtime)
    io_executor = ThreadPoolExecutor(settings.io_max_concurrent, thread_name_prefix="lakeward-io")
    cpu_executor = ThreadPoolExecutor(cpu_pool_size(settings), thread_name_prefix="lakeward-cpu")
    workers, activities = build_workers(client, settings, io_executor, cpu_executor, queues=queues)
    # MongoDB clients (pools of mongo_min/max_pool_size) shared by the activities until exit.
    mongo = shared_clients(settings.mongo_min_pool_size, settings.mongo_max_pool_size)
    await mongo.__aenter__()
    try:
        if not workers:
            raise RuntimeError(f"no task queue to poll: {settings.worker_queues!r}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        runs = [asyncio.create_task(w.run()) for w in workers]
        _log.info("worker %s started on %s, task queues %s", client.identity,
                  settings.temporal_address, ", ".join(w.task_queue for w in workers))  # fmt: skip
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait([stopping, *runs], return_when=asyncio.FIRST_COMPLETED)
        _log.info("shutting down: finishing activities in flight")
        await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
        stopping.cancel()
        ended = await asyncio.gather(*runs, return_exceptions=True)
        failures = [r for r in ended if isinstance(r, BaseException)]
        if failures:
            raise failures[0]
        _log.info("worker %s stopped", client.identity)
    finally:
        activities.close()
        await mongo.__aexit__(None, None, None)
        io_executor.shutdown(wait=True)
        cpu_executor.shutdown(wait=True)
