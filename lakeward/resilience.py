"""Circuit breakers, retries with full jitter, and the per-pipeline bulkhead (docs/resilience.md).

Pure logic, no Temporal: activities translate `CircuitOpenError` and `BulkheadFullError` into
retryable application errors, so Temporal's backoff spaces the attempts while a dependency is
down instead of every attempt hanging on its own timeouts.

Written here rather than taken from pybreaker, purgatory or tenacity (which DESIGN.md names):
pybreaker counts consecutive failures only and is not asyncio-aware, purgatory is asyncio-only,
neither has a failure ratio over a time window or lets half-open pass exactly one probe across
threads and the event loop at once; and none of the three is installed or locked for the project.
The retry helper is small enough that a new dependency for it would cost more than it saves.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from lakeward.metrics import (
    BULKHEAD_REJECTIONS,
    CIRCUIT_BREAKER_STATE,
    CIRCUIT_BREAKER_TRANSITIONS,
    PIPELINE_IN_FLIGHT,
    RETRIES,
)

__all__ = [
    "BREAKERS",
    "BreakerPolicy",
    "BreakerRegistry",
    "BreakerState",
    "Bulkhead",
    "BulkheadFullError",
    "CircuitBreaker",
    "CircuitOpenError",
    "Dependency",
    "GuardedCall",
    "RetryPolicy",
    "backoff_delay",
    "caused_by",
    "retry_call",
    "retry_call_async",
]

T = TypeVar("T")
Clock = Callable[[], float]


class Dependency(enum.StrEnum):
    """What a breaker guards; also the `dependency` metric label."""

    MONGODB = "mongodb"
    KAFKA = "kafka"
    OBJECT_STORE = "object_store"


class BreakerState(enum.IntEnum):
    """The value of lakeward_circuit_breaker_state."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


@dataclass(frozen=True)
class BreakerPolicy:
    """When a breaker opens and how long it stays open (defaults: docs/resilience.md)."""

    #: Consecutive failures that open the breaker.
    failure_threshold: int = 5
    #: ... or this share of failed calls within `window_s`, once `min_calls` were made there.
    failure_ratio: float = 0.5
    window_s: float = 60.0
    min_calls: int = 20
    #: How long an open breaker rejects calls before it lets one probe through.
    open_s: float = 30.0


class CircuitOpenError(RuntimeError):
    """A call was refused at once because its dependency's breaker is open (or probing).

    Retryable by nature: `retry_in_s` says when the breaker lets a probe through.
    """

    def __init__(
        self, dependency: str, retry_in_s: float, reason: str, *, probing: bool = False
    ) -> None:
        self.dependency = dependency
        self.retry_in_s = max(retry_in_s, 0.0)
        self.probing = probing
        if probing:
            what = "a probe call is checking whether it is back; retry in a moment"
        else:
            what = f"calls fail fast; the next probe is in {self.retry_in_s:.1f}s"
        super().__init__(f"{dependency} circuit breaker is open ({reason}): {what}")


class CircuitBreaker:
    """closed -> open after `failure_threshold` consecutive failures or a failure ratio over a
    window; open rejects at once; after `open_s` half-open lets exactly one probe through;
    the probe's success closes the breaker, its failure opens it again.

    Thread- and asyncio-safe: state changes happen under a lock held only for a few
    instructions, never across a call, so it can guard a call in a thread pool and around an
    `await` alike. Only failures a caller classifies as the dependency's count: a bad request
    the dependency answered is not its fault.
    """

    def __init__(
        self,
        dependency: str,
        policy: BreakerPolicy | None = None,
        *,
        endpoint: str = "",
        clock: Clock = time.monotonic,
        on_change: Callable[[CircuitBreaker, BreakerState], None] | None = None,
    ) -> None:
        self.dependency = dependency
        self.endpoint = endpoint
        self.policy = policy or BreakerPolicy()
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._calls: deque[tuple[float, bool]] = deque()  # (when, failed) within the window
        self._opened_at = 0.0
        self._probe_in_flight = False
        self._reason = ""

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def name(self) -> str:
        """The dependency, and its endpoint when it has one: what an error names."""
        return f"{self.dependency} ({self.endpoint})" if self.endpoint else self.dependency

    def before_call(self) -> bool:
        """Admit a call or raise CircuitOpenError; True when the call is the half-open probe."""
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return False
            now = self._clock()
            if self._state is BreakerState.OPEN:
                wait = self._opened_at + self.policy.open_s - now
                if wait > 0:
                    raise CircuitOpenError(self.name, wait, self._reason)
                self._move(BreakerState.HALF_OPEN)
            if self._probe_in_flight:
                raise CircuitOpenError(self.name, 1.0, self._reason, probing=True)
            self._probe_in_flight = True
            return True

    def record_success(self, probe: bool) -> None:
        with self._lock:
            if probe:
                self._probe_in_flight = False
            if self._state is not BreakerState.CLOSED:
                if probe:  # only the probe's answer closes: calls admitted before it opened
                    self._reset()  # may still be finishing, late
                    self._move(BreakerState.CLOSED)
                return
            self._consecutive = 0
            self._remember(failed=False)

    def record_failure(self, probe: bool, error: BaseException | None = None) -> None:
        with self._lock:
            now = self._clock()
            if probe:
                self._probe_in_flight = False
            last = f"last error {type(error).__name__}" if error is not None else "no detail"
            if self._state is not BreakerState.CLOSED:
                if probe:
                    self._reason = f"the probe failed, {last}"
                    self._opened_at = now
                    self._move(BreakerState.OPEN)
                return
            self._consecutive += 1
            self._remember(failed=True)
            failures = sum(1 for _, failed in self._calls if failed)
            calls = len(self._calls)
            policy = self.policy
            if self._consecutive >= policy.failure_threshold:
                self._reason = f"{self._consecutive} failures in a row, {last}"
            elif calls >= policy.min_calls and failures / calls >= policy.failure_ratio:
                self._reason = (
                    f"{failures} of {calls} calls failed in {policy.window_s:.0f}s, {last}"
                )
            else:
                return
            self._opened_at = now
            self._move(BreakerState.OPEN)

    def release(self, probe: bool) -> None:
        """The call ended without telling anything about the dependency (cancelled, or an
        error of another kind): a probe slot is freed for the next caller."""
        if probe:
            with self._lock:
                self._probe_in_flight = False

    def guard(self, is_failure: Callable[[BaseException], bool]) -> GuardedCall:
        """`with breaker.guard(is_failure):` around one call; `is_failure` tells the
        dependency's own failures from errors it answered with."""
        return GuardedCall({self: is_failure})

    def _remember(self, failed: bool) -> None:
        now = self._clock()
        self._calls.append((now, failed))
        while self._calls and self._calls[0][0] < now - self.policy.window_s:
            self._calls.popleft()

    def _reset(self) -> None:
        self._consecutive = 0
        self._calls.clear()

    def _move(self, state: BreakerState) -> None:
        if state is self._state:
            return
        self._state = state
        if state is BreakerState.CLOSED:
            self._reason = ""
        if self._on_change is not None:
            self._on_change(self, state)


class GuardedCall:
    """One call admitted by one or more breakers: `with guard:` around it (sync code, or
    awaits inside). `succeeded()` reports success early: a long call (capture runs for hours)
    proves its dependencies healthy at its first batch, and a half-open probe must not hold the
    probe slot for the whole run."""

    def __init__(self, breakers: dict[CircuitBreaker, Callable[[BaseException], bool]]) -> None:
        self._breakers = breakers
        self._admitted: dict[CircuitBreaker, bool] = {}  # breaker -> this call is its probe
        self._reported = False

    def __enter__(self) -> GuardedCall:
        try:
            for breaker in self._breakers:
                self._admitted[breaker] = breaker.before_call()
        except CircuitOpenError:
            self._reported = True
            for breaker, probe in self._admitted.items():
                breaker.release(probe)
            raise
        return self

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.succeeded()
        else:
            self._failed(exc)

    def succeeded(self) -> None:
        if not self._reported:
            self._reported = True
            for breaker, probe in self._admitted.items():
                breaker.record_success(probe)

    def _failed(self, exc: BaseException) -> None:
        late = self._reported  # reported healthy already: a failure now still counts
        self._reported = True
        for breaker, probe in self._admitted.items():
            if caused_by(exc, self._breakers[breaker]):
                breaker.record_failure(probe and not late, exc)
            elif not late:
                breaker.release(probe)


def caused_by(exc: BaseException, predicate: Callable[[BaseException], bool]) -> bool:
    """True when `exc` or one of its causes (`raise ... from`) or contexts matches."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if predicate(current):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


class BreakerRegistry:
    """One breaker per dependency per process, and per endpoint where a worker may talk to
    several (MongoDB: each pipeline's source cluster), so one dead source cluster does not fail
    the pipelines of the others. The metric keeps the bounded `dependency` label: its state is
    the worst of that dependency's breakers."""

    def __init__(self, policy: BreakerPolicy | None = None, clock: Clock = time.monotonic):
        self.policy = policy or BreakerPolicy()
        self._clock = clock
        self._lock = threading.Lock()
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}

    def configure(self, policy: BreakerPolicy) -> None:
        """New thresholds for breakers made from now on (a worker calls it at start)."""
        with self._lock:
            self.policy = policy
            for breaker in self._breakers.values():
                breaker.policy = policy

    def get(self, dependency: str, endpoint: str = "") -> CircuitBreaker:
        with self._lock:
            breaker = self._breakers.get((dependency, endpoint))
            if breaker is None:
                breaker = CircuitBreaker(
                    dependency, self.policy, endpoint=endpoint, clock=self._clock,
                    on_change=self._export,
                )  # fmt: skip
                self._breakers[(dependency, endpoint)] = breaker
                if sum(d == dependency for d, _ in self._breakers) == 1:  # its first
                    CIRCUIT_BREAKER_STATE.labels(dependency).set(BreakerState.CLOSED)
            return breaker

    def guard(
        self, checks: dict[str, Callable[[BaseException], bool]], endpoints: dict[str, str]
    ) -> GuardedCall:
        """Guard one call that uses several dependencies (dependency -> its failure test;
        dependency -> endpoint, where it has one)."""
        return GuardedCall({self.get(d, endpoints.get(d, "")): f for d, f in checks.items()})

    def _export(self, breaker: CircuitBreaker, state: BreakerState) -> None:
        # Called under the breaker's lock; reads the others' states without theirs.
        with self._lock:
            same = [b for (d, _), b in self._breakers.items() if d == breaker.dependency]
        worst = max((state, *(b.state for b in same if b is not breaker)))
        CIRCUIT_BREAKER_STATE.labels(breaker.dependency).set(worst)
        CIRCUIT_BREAKER_TRANSITIONS.labels(breaker.dependency, state.label).inc()


#: The process's breakers.
BREAKERS = BreakerRegistry()


# --- retries ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries of one call: at most `attempts` tries and `total_s` seconds in all."""

    attempts: int = 3
    base_s: float = 0.1
    cap_s: float = 2.0
    total_s: float = 10.0


def backoff_delay(policy: RetryPolicy, retry: int, rng: Callable[[], float]) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**retry)), so callers that failed
    together do not come back together."""
    return rng() * min(policy.cap_s, policy.base_s * 2**retry)


def retry_call(
    fn: Callable[[], T],
    *,
    dependency: str,
    is_transient: Callable[[BaseException], bool],
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Clock = time.monotonic,
    rng: Callable[[], float] = random.random,
) -> T:
    """Call `fn`, retrying errors `is_transient` accepts with backoff and full jitter, within
    the policy's bounds; any other error, and the last transient one, is raised as is."""
    policy = policy or RetryPolicy()
    began = clock()
    for retry in range(policy.attempts):
        try:
            return fn()
        except Exception as exc:
            delay = _next_delay(exc, policy, retry, began, clock, rng, is_transient)
            if delay is None:
                raise
        RETRIES.labels(dependency).inc()
        sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")


async def retry_call_async(
    fn: Callable[[], Awaitable[T]],
    *,
    dependency: str,
    is_transient: Callable[[BaseException], bool],
    policy: RetryPolicy | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Clock = time.monotonic,
    rng: Callable[[], float] = random.random,
) -> T:
    """`retry_call` for coroutines: the backoff sleeps without blocking the event loop."""
    policy = policy or RetryPolicy()
    began = clock()
    for retry in range(policy.attempts):
        try:
            return await fn()
        except Exception as exc:
            delay = _next_delay(exc, policy, retry, began, clock, rng, is_transient)
            if delay is None:
                raise
        RETRIES.labels(dependency).inc()
        await sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _next_delay(
    exc: BaseException,
    policy: RetryPolicy,
    retry: int,
    began: float,
    clock: Clock,
    rng: Callable[[], float],
    is_transient: Callable[[BaseException], bool],
) -> float | None:
    """The pause before the next try, or None when this error is final."""
    if isinstance(exc, CircuitOpenError) or not caused_by(exc, is_transient):
        return None
    if retry + 1 >= policy.attempts:
        return None
    delay = backoff_delay(policy, retry, rng)
    if clock() - began + delay > policy.total_s:
        return None
    return delay


# --- bulkhead -----------------------------------------------------------------------------------


class BulkheadFullError(RuntimeError):
    """A pipeline already runs its cap of activities in this worker; retry later."""

    def __init__(self, pipeline: str, limit: int) -> None:
        self.pipeline = pipeline
        self.limit = limit
        super().__init__(
            f"pipeline {pipeline!r} already runs {limit} activities in this worker "
            f"(LAKEWARD_MAX_ACTIVITIES_PER_PIPELINE={limit}); this one is refused so the other "
            "pipelines keep their share of the pool, and is retried shortly"
        )


class Bulkhead:
    """A cap on activities in flight per pipeline in one worker; 0 turns it off.

    Refuses at once rather than waiting: a waiting activity would hold a slot of the worker's
    pool, the very thing the cap protects.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}

    def in_flight(self, pipeline: str) -> int:
        with self._lock:
            return self._in_flight.get(pipeline, 0)

    @contextlib.contextmanager
    def slot(self, pipeline: str) -> Iterator[None]:
        with self._lock:
            running = self._in_flight.get(pipeline, 0)
            if self.limit and running >= self.limit:
                BULKHEAD_REJECTIONS.labels(pipeline).inc()
                raise BulkheadFullError(pipeline, self.limit)
            self._in_flight[pipeline] = running + 1
            PIPELINE_IN_FLIGHT.labels(pipeline).set(running + 1)
        try:
            yield
        finally:
            with self._lock:
                left = self._in_flight[pipeline] - 1
                if left:
                    self._in_flight[pipeline] = left
                else:
                    del self._in_flight[pipeline]
                PIPELINE_IN_FLIGHT.labels(pipeline).set(left)
