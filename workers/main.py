"""`lakeward worker`: the workflow task queue and the I/O activity task queue in one process."""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from prometheus_client import start_http_server
from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.maintenance import MaintenanceActivities
from activities.pipeline import PipelineActivities
from activities.snapshot import SnapshotActivities
from lakeward.settings import Settings
from workflows.contracts import DATA_CONVERTER
from workflows.pipeline import PipelineWorkflow
from workflows.snapshot import SnapshotWorkflow

__all__ = ["build_workers", "connect", "run_worker", "workflow_runner"]

_log = logging.getLogger("lakeward.worker")


async def connect(settings: Settings) -> Client:
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=DATA_CONVERTER,
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
    client: Client, settings: Settings, executor: ThreadPoolExecutor
) -> tuple[list[Worker], PipelineActivities]:
    """The workflow worker and the I/O activity worker (its own bounded pool: the bulkhead)."""
    activities = PipelineActivities(settings)
    snapshot = SnapshotActivities(settings)
    maintenance = MaintenanceActivities(settings)
    workflow_worker = Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[PipelineWorkflow, SnapshotWorkflow],
        workflow_runner=workflow_runner(),
    )
    io_worker = Worker(
        client,
        task_queue=settings.io_task_queue,
        activities=[
            activities.capture_changes,
            activities.apply_batch,
            activities.apply_dead_letters,
            activities.release_capture,
            activities.reset_capture,
            snapshot.plan_snapshot,
            snapshot.copy_snapshot_range,
            maintenance.maintain_table,
        ],
        activity_executor=executor,
        max_concurrent_activities=settings.io_max_concurrent,
        # Lets the micro-batch in flight finish on SIGTERM before the worker exits.
        graceful_shutdown_timeout=timedelta(seconds=60),
        # Cancellation reaches capture through heartbeats; the default throttle (0.8 x the 30 s
        # heartbeat timeout) would make a stop wait up to 24 s for capture to notice.
        max_heartbeat_throttle_interval=timedelta(seconds=2),
    )
    return [workflow_worker, io_worker], activities


async def run_worker(settings: Settings) -> None:
    if settings.worker_metrics_port:
        # Process metrics for now; the observability issue adds the REDS metrics.
        start_http_server(settings.worker_metrics_port, settings.worker_metrics_host)
    client = await connect(settings)
    executor = ThreadPoolExecutor(
        max_workers=settings.io_max_concurrent, thread_name_prefix="lakeward-io"
    )
    workers, activities = build_workers(client, settings, executor)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runs = [asyncio.create_task(w.run()) for w in workers]
    _log.info("worker started on %s (task queues %s, %s)", settings.temporal_address,
              settings.task_queue, settings.io_task_queue)  # fmt: skip
    await stop.wait()
    _log.info("shutting down: finishing activities in flight")
    await asyncio.gather(*(w.shutdown() for w in workers))
    await asyncio.gather(*runs, return_exceptions=True)
    activities.close()
    executor.shutdown(wait=True)
