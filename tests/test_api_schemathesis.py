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
import contextlib
import threading
from collections import Counter
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
    response_headers_conformance,
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
    response_headers_conformance,
]
#: The edge refusals' run: a body limit most generated specs exceed, a rate limit the run
#: outpaces; ~13 operations x this many examples.
EDGE_EXAMPLES = 8


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


@contextlib.contextmanager
def serving(settings, host: str, port: int) -> Iterator[LiveApi]:
    live = LiveApi(settings, host, port)
    live.start()
    assert live.ready.wait(60), "the API did not start"
    assert live.error is None, live.error
    try:
        yield live
    finally:
        live.server.should_exit = True
        live.join(60)


@pytest.fixture
def live_api(temporal, unique, tmp_path) -> Iterator[LiveApi]:
    # No rate limit: the run sends hundreds of requests a second with one token, and every
    # operation should be exercised, not answered 429 (the edge test below covers 429).
    settings = api_settings(tmp_path, unique, temporal.temporal_address)
    settings = settings.model_copy(update={"api_rate_limit_per_s": 0.0})
    with serving(settings, temporal.host, temporal.api_port) as live:
        yield live


def _exercise(live: LiveApi, modes, examples: int) -> tuple[list[str], Counter[int]]:
    """Every operation of the live document, generated cases checked; failures and statuses."""
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    headers = {"Authorization": f"Bearer {ADMIN}"}
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    for operation in operations:
        for mode in modes:

            @given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis.settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            def exercise(case: schemathesis.Case) -> None:
                response = case.call_and_validate(base_url=live.url, headers=headers, checks=CHECKS)
                statuses[response.status_code] += 1

            try:
                exercise()
            except hypothesis.errors.Unsatisfiable:
                pass  # no invalid request exists (no parameters, no body): nothing to send
            except Exception as exc:  # collect them all: one run shows every broken operation
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    return failures, statuses


def test_generated_requests_find_no_server_error_and_no_schema_violation(live_api) -> None:
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    failures, _ = _exercise(live_api, modes, EXAMPLES)
    assert not failures, "\n\n".join(failures)


def test_refusals_at_the_edge_are_the_documented_413_and_429(temporal, unique, tmp_path) -> None:
    """With a tiny body limit and a slow rate, generated requests meet 413 and 429: both are in
    the document (status, problem+json body, the Retry-After header) and nothing is a 500."""
    settings = api_settings(tmp_path, unique, temporal.temporal_address).model_copy(
        update={"api_max_body_bytes": 64, "api_rate_limit_per_s": 2.0, "api_rate_limit_burst": 20}
    )
    with serving(settings, temporal.host, temporal.api_port) as live:
        failures, statuses = _exercise(live, (GenerationMode.POSITIVE,), EDGE_EXAMPLES)
    assert not failures, "\n\n".join(failures)
    assert statuses[413] and statuses[429], statuses
    assert not [status for status in statuses if status >= 500], statuses
