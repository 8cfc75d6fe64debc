"""Circuit breakers, retries with full jitter and the per-pipeline bulkhead.

Pure tier: the breaker's state machine and the retry helper with a fake clock (no servers).
Real servers: tests/test_resilience_stack.py.
"""

from __future__ import annotations

import asyncio
import itertools
import threading

import pytest
from prometheus_client import REGISTRY
from pymongo.errors import ConnectionFailure

from activities.resilience import guarded, pipeline_cap
from lakeward.mongo.clients import hosts_of
from lakeward.resilience import (
    BreakerPolicy,
    BreakerRegistry,
    BreakerState,
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    Dependency,
    RetryPolicy,
    backoff_delay,
    retry_call,
    retry_call_async,
)
from lakeward.settings import Settings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Down(ConnectionError):
    """The dependency did not answer."""


class BadRequest(ValueError):
    """The dependency answered: not its fault."""


def is_down(exc: BaseException) -> bool:
    return isinstance(exc, Down)


def fail(breaker: CircuitBreaker, exc: BaseException | None = None) -> None:
    with pytest.raises(type(exc or Down())), breaker.guard(is_down):
        raise exc or Down("refused")


def succeed(breaker: CircuitBreaker) -> None:
    with breaker.guard(is_down):
        pass


def metric(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_consecutive_failures_open_the_breaker_and_calls_fail_fast_naming_the_dependency():
    clock = FakeClock()
    breaker = CircuitBreaker("mongodb", BreakerPolicy(failure_threshold=3, open_s=30), clock=clock)
    fail(breaker)
    fail(breaker)
    succeed(breaker)  # a success in between starts the count again
    fail(breaker)
    fail(breaker)
    assert breaker.state is BreakerState.CLOSED
    fail(breaker)
    assert breaker.state is BreakerState.OPEN

    clock.now += 10
    ran = []
    with pytest.raises(CircuitOpenError) as raised, breaker.guard(is_down):
        ran.append(1)
    assert not ran  # the call never ran
    assert raised.value.dependency == "mongodb"
    assert raised.value.retry_in_s == pytest.approx(20)
    assert "mongodb circuit breaker is open" in str(raised.value)
    assert "3 failures in a row, last error Down" in str(raised.value)
    assert "next probe is in 20.0s" in str(raised.value)


def test_errors_the_dependency_answered_do_not_open_the_breaker() -> None:
    breaker = CircuitBreaker("kafka", BreakerPolicy(failure_threshold=2), clock=FakeClock())
    for _ in range(5):
        fail(breaker, BadRequest("no such field"))
    assert breaker.state is BreakerState.CLOSED


def test_a_failure_ratio_over_the_window_opens_the_breaker() -> None:
    clock = FakeClock()
    policy = BreakerPolicy(failure_threshold=100, failure_ratio=0.5, window_s=60, min_calls=10)
    breaker = CircuitBreaker("object_store", policy, clock=clock)
    for _ in range(4):  # every other call fails: never two in a row
        succeed(breaker)
        fail(breaker)
        clock.now += 1
    assert breaker.state is BreakerState.CLOSED  # 8 calls: under min_calls
    succeed(breaker)
    fail(breaker)
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpenError, match="5 of 10 calls failed in 60s"):
        succeed(breaker)


def test_old_calls_leave_the_window() -> None:
    clock = FakeClock()
    policy = BreakerPolicy(failure_threshold=100, failure_ratio=0.5, window_s=10, min_calls=4)
    breaker = CircuitBreaker("kafka", policy, clock=clock)
    fail(breaker)
    fail(breaker)
    fail(breaker)
    clock.now += 11  # those three are out of the window now
    succeed(breaker)
    succeed(breaker)
    succeed(breaker)
    fail(breaker)
    assert breaker.state is BreakerState.CLOSED  # 1 of 4 in the window


def test_half_open_lets_exactly_one_probe_through_and_its_success_closes() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("mongodb", BreakerPolicy(failure_threshold=1, open_s=5), clock=clock)
    fail(breaker)
    clock.now += 5
    with breaker.guard(is_down):
        assert breaker.state is BreakerState.HALF_OPEN
        with pytest.raises(CircuitOpenError, match="a probe call is checking") as other:
            succeed(breaker)
        assert other.value.probing
    assert breaker.state is BreakerState.CLOSED
    succeed(breaker)


def test_a_failed_probe_opens_the_breaker_for_another_period() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("mongodb", BreakerPolicy(failure_threshold=1, open_s=5), clock=clock)
    fail(breaker)
    clock.now += 6
    fail(breaker)  # the probe
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpenError, match="the probe failed") as raised:
        succeed(breaker)
    assert raised.value.retry_in_s == pytest.approx(5)


def test_a_cancelled_probe_frees_the_probe_slot() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("kafka", BreakerPolicy(failure_threshold=1, open_s=1), clock=clock)
    fail(breaker)
    clock.now += 1
    with pytest.raises(asyncio.CancelledError), breaker.guard(is_down):
        raise asyncio.CancelledError
    assert breaker.state is BreakerState.HALF_OPEN
    succeed(breaker)  # the next caller is the probe
    assert breaker.state is BreakerState.CLOSED


def test_a_long_call_reports_success_early_and_releases_the_probe() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("mongodb", BreakerPolicy(failure_threshold=1, open_s=1), clock=clock)
    fail(breaker)
    clock.now += 1
    with breaker.guard(is_down) as call:
        call.succeeded()  # capture's first batch went through
        assert breaker.state is BreakerState.CLOSED
        succeed(breaker)  # others need not wait for the long call to end


def test_the_probe_is_admitted_once_across_threads() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("kafka", BreakerPolicy(failure_threshold=1, open_s=1), clock=clock)
    fail(breaker)
    clock.now += 1
    admitted: list[bool] = []
    refused: list[CircuitOpenError] = []
    start = threading.Barrier(8)

    def call() -> None:
        start.wait()
        try:
            admitted.append(breaker.before_call())
        except CircuitOpenError as exc:
            refused.append(exc)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert admitted == [True]
    assert len(refused) == 7 and all(e.probing for e in refused)


def test_breaker_state_and_transitions_are_exported_per_dependency() -> None:
    clock = FakeClock()
    registry = BreakerRegistry(BreakerPolicy(failure_threshold=1, open_s=1), clock=clock)
    dependency = "object_store"
    before = {
        s: metric("lakeward_circuit_breaker_transitions_total", dependency=dependency, state=s)
        or 0.0
        for s in ("open", "half-open", "closed")
    }
    breaker = registry.get(dependency)
    assert registry.get(dependency) is breaker  # one per dependency
    assert metric("lakeward_circuit_breaker_state", dependency=dependency) == 0
    fail(breaker)
    assert metric("lakeward_circuit_breaker_state", dependency=dependency) == 2
    clock.now += 1
    with breaker.guard(is_down):
        assert metric("lakeward_circuit_breaker_state", dependency=dependency) == 1
    assert metric("lakeward_circuit_breaker_state", dependency=dependency) == 0
    for state in ("open", "half-open", "closed"):
        after = metric("lakeward_circuit_breaker_transitions_total", dependency=dependency,
                       state=state)  # fmt: skip
        assert after == before[state] + 1, state


def test_a_guard_over_several_dependencies_blames_only_the_one_that_failed() -> None:
    registry = BreakerRegistry(BreakerPolicy(failure_threshold=1), clock=FakeClock())
    checks = {"kafka": is_down, "object_store": lambda e: False}
    with pytest.raises(Down), registry.guard(checks, {}):
        raise Down("broker gone")
    assert registry.get("kafka").state is BreakerState.OPEN
    assert registry.get("object_store").state is BreakerState.CLOSED
    both = {"object_store": is_down, "kafka": is_down}
    with pytest.raises(CircuitOpenError, match="kafka"), registry.guard(both, {}):
        pass
    assert registry.get("object_store").before_call() is False


# --- retries ------------------------------------------------------------------------------------


def test_full_jitter_stays_under_the_capped_exponential() -> None:
    policy = RetryPolicy(base_s=0.1, cap_s=1.0)
    assert backoff_delay(policy, 0, lambda: 0.999) == pytest.approx(0.0999)
    assert backoff_delay(policy, 3, lambda: 0.5) == pytest.approx(0.4)
    assert backoff_delay(policy, 10, lambda: 0.999) == pytest.approx(0.999)  # capped
    assert backoff_delay(policy, 2, lambda: 0.0) == 0.0


def test_a_transient_error_is_retried_and_counted() -> None:
    clock = FakeClock()
    calls = []
    before = metric("lakeward_retries_total", dependency="kafka") or 0.0

    def flaky() -> str:
        calls.append(clock.now)
        if len(calls) < 3:
            raise Down("timed out")
        return "ok"

    result = retry_call(
        flaky, dependency="kafka", is_transient=is_down, policy=RetryPolicy(attempts=5),
        sleep=clock.sleep, clock=clock, rng=lambda: 1.0,
    )  # fmt: skip
    assert result == "ok"
    assert [round(b - a, 3) for a, b in itertools.pairwise(calls)] == [0.1, 0.2]
    assert metric("lakeward_retries_total", dependency="kafka") == before + 2


def test_attempts_are_bounded_and_the_last_error_is_raised() -> None:
    clock = FakeClock()
    calls = []

    def down() -> None:
        calls.append(1)
        raise Down(f"try {len(calls)}")

    with pytest.raises(Down, match="try 3"):
        retry_call(down, dependency="mongodb", is_transient=is_down,
                   policy=RetryPolicy(attempts=3), sleep=clock.sleep, clock=clock)  # fmt: skip
    assert len(calls) == 3


def test_total_time_is_bounded() -> None:
    clock = FakeClock()
    calls = []

    def slow_down() -> None:
        calls.append(1)
        clock.now += 4  # each try waits on a timeout
        raise Down("timed out")

    policy = RetryPolicy(attempts=10, base_s=1, cap_s=1, total_s=9)
    with pytest.raises(Down):
        retry_call(slow_down, dependency="object_store", is_transient=is_down, policy=policy,
                   sleep=clock.sleep, clock=clock, rng=lambda: 1.0)  # fmt: skip
    assert len(calls) == 2  # a third try would start at 10 s, past 9


def test_other_errors_and_an_open_breaker_are_not_retried() -> None:
    for error in (BadRequest("bad"), CircuitOpenError("kafka", 3, "down")):
        calls = []

        def once(error: Exception = error, calls: list[int] = calls) -> None:
            calls.append(1)
            raise error

        with pytest.raises(type(error)):
            retry_call(once, dependency="kafka", sleep=lambda s: None,
                       is_transient=lambda e: isinstance(e, Down | CircuitOpenError))  # fmt: skip
        assert len(calls) == 1


def test_a_transient_cause_is_recognised_through_wrapping() -> None:
    calls = []

    def wrapped() -> str:
        calls.append(1)
        if len(calls) == 1:
            try:
                raise Down("refused")
            except Down as exc:
                raise RuntimeError("reading the log failed") from exc
        return "ok"

    assert retry_call(wrapped, dependency="object_store", is_transient=is_down,
                      sleep=lambda s: None) == "ok"  # fmt: skip


async def test_async_retries_sleep_without_blocking_the_loop() -> None:
    clock = FakeClock()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    calls = []

    async def flaky() -> int:
        calls.append(1)
        if len(calls) < 2:
            raise Down("not primary")
        return 7

    assert await retry_call_async(flaky, dependency="mongodb", is_transient=is_down,
                                  sleep=sleep, clock=clock, rng=lambda: 0.5) == 7  # fmt: skip
    assert slept == [pytest.approx(0.05)]


# --- bulkhead -----------------------------------------------------------------------------------


def test_the_bulkhead_caps_one_pipeline_and_leaves_others_their_slots() -> None:
    bulkhead = Bulkhead(limit=2)
    rejected_before = metric("lakeward_bulkhead_rejections_total", pipeline="stuck") or 0.0
    with bulkhead.slot("stuck"), bulkhead.slot("stuck"):
        assert metric("lakeward_pipeline_in_flight", pipeline="stuck") == 2
        full = pytest.raises(BulkheadFullError, match="LAKEWARD_MAX_ACTIVITIES_PER_PIPELINE=2")
        with full, bulkhead.slot("stuck"):
            pass
        with bulkhead.slot("healthy"):
            assert bulkhead.in_flight("healthy") == 1
    assert bulkhead.in_flight("stuck") == 0
    assert metric("lakeward_pipeline_in_flight", pipeline="stuck") == 0
    assert metric("lakeward_bulkhead_rejections_total", pipeline="stuck") == rejected_before + 1


def test_a_bulkhead_of_zero_is_off() -> None:
    bulkhead = Bulkhead(limit=0)
    with bulkhead.slot("p"), bulkhead.slot("p"), bulkhead.slot("p"):
        assert bulkhead.in_flight("p") == 3


def test_each_endpoint_has_its_breaker_and_the_metric_shows_the_worst() -> None:
    clock = FakeClock()
    registry = BreakerRegistry(BreakerPolicy(failure_threshold=1, open_s=5), clock=clock)
    dead = registry.get("mongodb", "10.0.0.1:27017")
    alive = registry.get("mongodb", "10.0.0.2:27017")
    fail(dead)
    succeed(alive)  # another source cluster is not failed by this one
    assert metric("lakeward_circuit_breaker_state", dependency="mongodb") == 2
    with pytest.raises(CircuitOpenError, match=r"mongodb \(10.0.0.1:27017\) circuit breaker"):
        succeed(dead)
    clock.now += 5
    succeed(dead)
    assert metric("lakeward_circuit_breaker_state", dependency="mongodb") == 0


def test_a_source_is_named_by_its_hosts_only() -> None:
    assert hosts_of("mongodb://user:s3cret@a:1,b:2/shop?replicaSet=rs0") == "a:1,b:2"
    assert hosts_of("mongodb+srv://cluster.example.net/") == "cluster.example.net"


# --- the Temporal side: what the activities and the worker use ---------------------------------


def test_the_pipeline_cap_is_half_the_io_pool_unless_set() -> None:
    assert pipeline_cap(Settings()) == 8
    assert pipeline_cap(Settings(io_max_concurrent=3)) == 1
    assert pipeline_cap(Settings(max_activities_per_pipeline=0)) == 0  # off
    assert pipeline_cap(Settings(max_activities_per_pipeline=5)) == 5


def test_an_open_source_breaker_names_the_hosts_but_never_the_credentials(monkeypatch) -> None:
    clock = FakeClock()
    registry = BreakerRegistry(BreakerPolicy(failure_threshold=1, open_s=5), clock=clock)
    monkeypatch.setattr("activities.resilience.BREAKERS", registry)
    source = "mongodb://reader:pa55word@10.9.8.7:27017/shop?replicaSet=rs0"
    with pytest.raises(ConnectionFailure), guarded(Dependency.MONGODB, source=source):
        raise ConnectionFailure("connection refused")
    with pytest.raises(CircuitOpenError) as raised, guarded(Dependency.MONGODB, source=source):
        pass
    assert "mongodb (10.9.8.7:27017) circuit breaker is open" in str(raised.value)
    assert "pa55word" not in str(raised.value) and "reader" not in str(raised.value)
    with guarded(Dependency.MONGODB, source="mongodb://10.9.8.8:27017/"):
        pass  # another cluster is not affected
    clock.now += 5
    with guarded(Dependency.MONGODB, source=source):
        pass  # the probe closes it again
    assert metric("lakeward_circuit_breaker_state", dependency="mongodb") == 0
