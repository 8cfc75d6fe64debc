"""Pool saturation of a worker process: how many of a task queue's activity slots are busy.

An activity interceptor per task-queue worker counts the activities it runs; `pool_size` is the
bound the worker was built with. Together they are `lakeward_pool_in_use / lakeward_pool_size`,
the saturation of that queue's bulkhead in this process (docs/metrics.md).
"""

from __future__ import annotations

from typing import Any

from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from lakeward.metrics import POOL_IN_USE, POOL_SIZE

__all__ = ["PoolUsage"]


class PoolUsage(Interceptor):
    """Counts the activities running on one task queue's pool (`queue`: workflow, io, cpu)."""

    def __init__(self, queue: str, size: int) -> None:
        self.queue = queue
        POOL_SIZE.labels(queue).set(size)
        POOL_IN_USE.labels(queue).set(0)

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _Counting(next, self.queue)


class _Counting(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, queue: str) -> None:
        super().__init__(next)
        self._in_use = POOL_IN_USE.labels(queue)

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        self._in_use.inc()
        try:
            return await self.next.execute_activity(input)
        finally:
            self._in_use.dec()
