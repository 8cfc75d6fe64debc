"""The orchestration price on its own: a workflow that runs no-op activities one after another.

`bench.e2e` runs it on the same Temporal dev server as the pipelines, with a worker in the
benchmark process on a task queue of its own, so the time per activity is Temporal's round trip
(schedule, dispatch to the worker, complete, next workflow task) and nothing else. Kept apart
from `bench/e2e.py` because the workflow sandbox imports this module again: it must import
nothing but temporalio.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio import activity, workflow

__all__ = ["NOOP_ACTIVITY", "NoopInput", "NoopWorkflow", "noop"]

NOOP_ACTIVITY = "bench_noop"


@dataclass
class NoopInput:
    activities: int
    #: Local activities (run inside the workflow task's worker, no server round trip each).
    local: bool = False


@activity.defn(name=NOOP_ACTIVITY)
async def noop() -> None:
    return None


@workflow.defn(name="BenchNoopWorkflow")
class NoopWorkflow:
    @workflow.run
    async def run(self, input: NoopInput) -> int:
        for _ in range(input.activities):
            if input.local:
                await workflow.execute_local_activity(
                    NOOP_ACTIVITY, start_to_close_timeout=timedelta(seconds=10)
                )
            else:
                await workflow.execute_activity(
                    NOOP_ACTIVITY, start_to_close_timeout=timedelta(seconds=10)
                )
        return input.activities
