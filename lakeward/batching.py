"""Adaptive micro-batch size: large commits drain a backlog, small ones keep a stream fresh.

A Delta MERGE costs roughly the files it rewrites, which for updates spread over a table is
close to the whole table whatever the batch size; so a backlog drains fastest in large
batches, while a quiet stream is fresher with small ones (each closes at max_wait anyway).
The controller runs per table in the worker that keeps the table's applier warm:

* grow (x2, up to the upper bound) when a batch came back full, at least as many records
  again wait behind it, and it took under half the latency budget;
* shrink (halve, down to the lower bound) when a batch took longer than the latency budget,
  so a commit never outgrows the activity's heartbeat and freshness targets;
* decay back towards the configured size when the backlog is gone.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AdaptiveBatchSize"]


@dataclass
class AdaptiveBatchSize:
    lower: int
    upper: int
    #: Where it starts and where it decays back to without a backlog (batching.max_records).
    start: int
    #: Seconds one batch (read, plan, commit) may take before the size shrinks.
    latency_budget_s: float = 30.0
    size: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.lower <= self.start <= self.upper:
            raise ValueError(f"need 1 <= lower <= start <= upper, got {self}")
        self.size = self.size or self.start

    def observe(self, records: int, backlog: int, batch_s: float) -> int:
        """Record one batch's outcome; returns the size for the next one."""
        if batch_s > self.latency_budget_s and self.size > self.lower:
            self.size = max(self.lower, self.size // 2)
        elif records >= self.size and backlog >= self.size and batch_s * 2 <= self.latency_budget_s:
            self.size = min(self.upper, self.size * 2)
        elif backlog < self.size and self.size > self.start:
            self.size = max(self.start, self.size // 2)
        elif backlog == 0 and records < self.size and self.size < self.start:
            self.size = min(self.start, self.size * 2)
        return self.size
