"""Circuit breakers and the per-pipeline bulkhead as Temporal sees them (docs/resilience.md).

Activities wrap their MongoDB, Kafka and object-store work in `guarded(...)`; the worker's
`ResilienceInterceptor` turns a refused call (`CircuitOpenError`, `BulkheadFullError`) into a
retryable `ApplicationError` with a stable type and the delay until it is worth trying again, so
Temporal's retry spaces the attempts instead of each one hanging on the driver's timeouts.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from temporalio.exceptions import ApplicationError
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from lakeward.delta.errors import is_unavailable as object_store_unavailable
from lakeward.kafka.errors import is_unavailable as kafka_unavailable
from lakeward.mongo.clients import hosts_of
from lakeward.mongo.errors import is_unavailable as mongodb_unavailable
from lakeward.resilience import (
    BREAKERS,
    BreakerPolicy,
    Bulkhead,
    BulkheadFullError,
    CircuitOpenError,
    Dependency,
    GuardedCall,
)
from lakeward.settings import Settings

__all__ = [
    "DEPENDENCY_FAILURES",
    "ResilienceInterceptor",
    "breaker_policy",
    "guarded",
    "pipeline_cap",
]

#: What counts as each dependency's own failure (the adapters decide, at the driver's edge).
DEPENDENCY_FAILURES: dict[Dependency, Callable[[BaseException], bool]] = {
    Dependency.MONGODB: mongodb_unavailable,
    Dependency.KAFKA: kafka_unavailable,
    Dependency.OBJECT_STORE: object_store_unavailable,
}


def guarded(*dependencies: Dependency, source: str = "") -> GuardedCall:
    """`with guarded(Dependency.KAFKA, ...):` around work that needs those dependencies: fails
    at once while one's breaker is open, and reports the outcome to the breakers. `source`:
    the pipeline's MongoDB URI (or secret reference); each source cluster has its own breaker."""
    # A secret reference (env:VAR, file:/path) names the cluster without being a secret.
    name = hosts_of(source) if "://" in source else source
    endpoints = {Dependency.MONGODB.value: name} if name else {}
    return BREAKERS.guard({d: DEPENDENCY_FAILURES[d] for d in dependencies}, endpoints)


def breaker_policy(settings: Settings) -> BreakerPolicy:
    return BreakerPolicy(
        failure_threshold=settings.breaker_failure_threshold,
        failure_ratio=settings.breaker_failure_ratio,
        window_s=settings.breaker_window_s,
        min_calls=settings.breaker_min_calls,
        open_s=settings.breaker_open_s,
    )


def pipeline_cap(settings: Settings) -> int:
    """The per-pipeline bulkhead of the I/O pool: half of it unless set (0: no cap)."""
    if settings.max_activities_per_pipeline is not None:
        return settings.max_activities_per_pipeline
    return max(1, settings.io_max_concurrent // 2)


class ResilienceInterceptor(Interceptor):
    """Counts each pipeline's activities against `bulkhead` and translates refusals into
    retryable application errors (`CircuitOpen`, `BulkheadFull`)."""

    def __init__(self, bulkhead: Bulkhead | None = None) -> None:
        self.bulkhead = bulkhead or Bulkhead(0)

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ResilientActivity(next, self.bulkhead)


class _ResilientActivity(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, bulkhead: Bulkhead) -> None:
        super().__init__(next)
        self._bulkhead = bulkhead

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        pipeline = pipeline_of(input.args)
        try:
            # The slot covers a sync activity too: the SDK awaits its thread-pool run here.
            with self._bulkhead.slot(pipeline) if pipeline else contextlib.nullcontext():
                return await self.next.execute_activity(input)
        except CircuitOpenError as exc:
            # `from None`: the message says it all; nothing of the driver's reaches history.
            raise ApplicationError(
                str(exc),
                type="CircuitOpen",
                next_retry_delay=timedelta(seconds=max(exc.retry_in_s, 1.0)),
            ) from None
        except BulkheadFullError as exc:
            raise ApplicationError(
                str(exc),
                type="BulkheadFull",
                # Jittered, so the refused activities of a pipeline do not come back together.
                next_retry_delay=timedelta(seconds=random.uniform(0.5, 1.5)),
            ) from None


def pipeline_of(args: Sequence[Any]) -> str | None:
    """The pipeline an activity works for: its input's `spec.name` (None: not a pipeline's)."""
    if not args:
        return None
    name = getattr(getattr(args[0], "spec", None), "name", None)
    return name if isinstance(name, str) else None
