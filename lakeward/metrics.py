"""Lakeward's Prometheus metrics, one module for all of them (docs/metrics.md lists them).

Names, types and labels follow the shared metric catalogue; labels stay bounded (no document
ids, offsets or keys). Metric objects register in prometheus-client's default registry, which
the worker's /metrics serves.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

__all__ = [
    "BULKHEAD_REJECTIONS",
    "CIRCUIT_BREAKER_STATE",
    "CIRCUIT_BREAKER_TRANSITIONS",
    "PIPELINE_IN_FLIGHT",
    "RETRIES",
]

CIRCUIT_BREAKER_STATE = Gauge(
    "lakeward_circuit_breaker_state",
    "Circuit breaker state per dependency: 0 closed, 1 half-open, 2 open.",
    ["dependency"],
)
CIRCUIT_BREAKER_TRANSITIONS = Counter(
    "lakeward_circuit_breaker_transitions_total",
    "Circuit breaker state changes, by the state entered.",
    ["dependency", "state"],
)
RETRIES = Counter(
    "lakeward_retries_total",
    "Retries of a single transient call inside an activity (not Temporal's activity retries).",
    ["dependency"],
)
PIPELINE_IN_FLIGHT = Gauge(
    "lakeward_pipeline_in_flight",
    "Activities running for the pipeline in this worker (the per-pipeline bulkhead).",
    ["pipeline"],
)
BULKHEAD_REJECTIONS = Counter(
    "lakeward_bulkhead_rejections_total",
    "Activities refused because their pipeline had its cap of activities in flight.",
    ["pipeline"],
)
