"""The adaptive batch size: pure logic, so a unit test of the controller."""

from __future__ import annotations

import pytest

from lakeward.batching import AdaptiveBatchSize


def test_a_backlog_grows_the_batch_to_the_upper_bound_then_it_decays_back() -> None:
    sizes = AdaptiveBatchSize(lower=100, upper=20_000, start=1000)
    seen = [sizes.observe(records=sizes.size, backlog=500_000, batch_s=1.0) for _ in range(6)]
    assert seen == [2000, 4000, 8000, 16_000, 20_000, 20_000]
    # The backlog is gone: batches come back short and the size returns to where it started.
    seen = [sizes.observe(records=300, backlog=0, batch_s=0.2) for _ in range(6)]
    assert seen == [10_000, 5000, 2500, 1250, 1000, 1000]


def test_a_slow_batch_shrinks_the_size_and_a_full_slow_one_does_not_grow_it() -> None:
    sizes = AdaptiveBatchSize(lower=100, upper=20_000, start=8000, latency_budget_s=10)
    assert sizes.observe(records=8000, backlog=1_000_000, batch_s=12) == 4000
    assert sizes.observe(records=4000, backlog=1_000_000, batch_s=6) == 4000  # over half the budget
    assert sizes.observe(records=4000, backlog=1_000_000, batch_s=4) == 8000
    for _ in range(10):
        sizes.observe(records=sizes.size, backlog=1_000_000, batch_s=60)
    assert sizes.size == 100  # never below the lower bound


def test_a_quiet_stream_keeps_the_configured_size() -> None:
    sizes = AdaptiveBatchSize(lower=100, upper=20_000, start=1000)
    assert {sizes.observe(records=3, backlog=0, batch_s=0.1) for _ in range(5)} == {1000}


def test_bounds_out_of_order_are_refused() -> None:
    with pytest.raises(ValueError, match="lower <= start <= upper"):
        AdaptiveBatchSize(lower=500, upper=20_000, start=100)
