"""Schemathesis against the live API: generated requests (valid and invalid) to every operation of
the OpenAPI document find no server error and no answer that breaks the document (status codes,
content types, response schemas).

A real uvicorn on the test stack's API port, a real Temporal, and a workflow-only worker in the
server's thread: generated specs start real pipeline workflows that answer their status query, but
no worker polls their activity queue, so nothing connects to whatever MongoDB a generated spec
names and nothing is written to a generated sink path. Explicit examples are not sent for the
same reason (the document's example spec names a real local MongoDB and lake).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import hypothesis
import hypothesis.errors
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode
from temporalio.worker import Worker

from api.app import create_app
from tests.test_api import ADMIN, api_settings, end_workflows
from workers.main import workflow_runner
from workflows.pipeline import PipelineWorkflow
from workflows.snapshot import SnapshotWorkflow

pytestmark = pytest.mark.slow
#: Examples per operation and generation mode: ~13 operations x 2 modes, well under 2 minutes.
EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


class LiveApi(threading.Thread):
    """uvicorn plus a workflow-only worker on one event loop in a thread of their own."""

    def __init__(self, settings, host: str, port: int) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.url = f"http://{host}:{port}"
        self.app = create_app(settings)  # connects its own Temporal client in its lifespan
        config = uvicorn.Config(self.app, host=host, port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by the fixture
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        serving = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if serving.done():
                await serving
                raise RuntimeError("uvicorn ended before it started")
            await asyncio.sleep(0.05)
        client = self.app.state.client  # the API's converter, so the worker reads its inputs
        worker = Worker(
            client,
            task_queue=self.settings.task_queue,
            workflows=[PipelineWorkflow, SnapshotWorkflow],
            workflow_runner=workflow_runner(),
            # Evicted after every task, on their own loop: runs left in the cache at shutdown would
            # be closed by the garbage collector, and the pipeline's cleanup in `finally` awaits.
            max_cached_workflows=0,
        )
        async with worker:
            self.ready.set()
            while not self.server.should_exit:
                await asyncio.sleep(0.1)
            await end_workflows(client, self.settings.task_queue)
        await serving


@pytest.fixture
def live_api(temporal, unique, tmp_path) -> Iterator[LiveApi]:
    settings = api_settings(tmp_path, unique, temporal.temporal_address)
    live = LiveApi(settings, temporal.host, temporal.api_port)
    live.start()
    assert live.ready.wait(60), "the API did not start"
    assert live.error is None, live.error
    try:
        yield live
    finally:
        live.server.should_exit = True
        live.join(60)


def test_generated_requests_find_no_server_error_and_no_schema_violation(live_api) -> None:
    schema = schemathesis.openapi.from_url(f"{live_api.url}/openapi.json")
    headers = {"Authorization": f"Bearer {ADMIN}"}
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis.settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            def exercise(case: schemathesis.Case) -> None:
                case.call_and_validate(base_url=live_api.url, headers=headers, checks=CHECKS)

            try:
                exercise()
            except hypothesis.errors.Unsatisfiable:
                pass  # no invalid request exists (no parameters, no body): nothing to send
            except Exception as exc:  # collect them all: one run shows every broken operation
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)
