"""Every Lakeward metric, defined once on prometheus-client's default registry.

docs/metrics.md is the catalogue (name, type, labels, meaning, where recorded) and a test holds
this module and that table to each other through a real scrape. Other modules import the metric
objects or, better, the small helpers below, so a call site stays one line.

Labels are bounded on purpose: pipeline, collection, op, partition number, exception class,
dead-letter reason, kind, outcome, dependency, state, queue, method, route template, status.
Never a document id, an offset or a Kafka key: each distinct label value is a time series kept
for the life of the process.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import metadata
from typing import Protocol, TypeVar

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

__all__ = [
    "API_REQUESTS",
    "API_REQUESTS_IN_FLIGHT",
    "API_REQUESTS_REFUSED",
    "API_REQUEST_DURATION",
    "APPLY_BATCHES",
    "APPLY_BATCHES_IN_FLIGHT",
    "APPLY_BATCH_DURATION",
    "APPLY_COMMIT_DURATION",
    "APPLY_ERRORS",
    "APPLY_RECORDS",
    "BUILD_INFO",
    "BULKHEAD_REJECTIONS",
    "CAPTURE_BATCHES",
    "CAPTURE_BATCH_DURATION",
    "CAPTURE_ERRORS",
    "CAPTURE_EVENTS",
    "CAPTURE_LAG",
    "CIRCUIT_BREAKER_STATE",
    "CIRCUIT_BREAKER_TRANSITIONS",
    "DEAD_LETTERS",
    "FRESHNESS",
    "FRESHNESS_LAG",
    "KAFKA_BACKLOG",
    "PIPELINE_IN_FLIGHT",
    "POOL_IN_USE",
    "POOL_SIZE",
    "RECONCILE_DIFFERENCES",
    "RECONCILE_DOCUMENTS",
    "RECONCILE_DURATION",
    "RECONCILE_RUNS",
    "RETRIES",
    "SCHEMA_EVOLUTIONS",
    "SNAPSHOT_DOCUMENTS",
    "SNAPSHOT_PROGRESS",
    "TYPE_CONVERSION_FAILURES",
    "AppliedBatch",
    "apply_attempt",
    "capture_caught_up",
    "capture_errors_counted",
    "capture_stopped",
    "record_apply",
    "record_capture_batch",
    "record_capture_dead_letters",
    "record_reconcile",
    "record_snapshot_range",
    "set_build_info",
]

T = TypeVar("T")

# In the text format each counter and histogram series would get a second series, a `_created`
# gauge family, that no query of ours needs: half the series for nothing at 100+ pipelines.
disable_created_metrics()

#: Batch and commit latencies: a 100 ms micro-batch up to a minutes-long MERGE.
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
#: Source-to-lake delay: the SLO thresholds (1, 2, 5, 10, 30, 60, 120, 300 s) are bucket edges,
#: so `histogram_quantile` and "share under N s" need no interpolation at those points.
FRESHNESS_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
#: API requests: most answer in milliseconds; a start that waits on Temporal takes longer.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: Reconciliation runs: seconds to hours.
RECONCILE_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)

# --- build ---------------------------------------------------------------------------------------

BUILD_INFO = Gauge(
    "lakeward_build_info", "Always 1: the component and Lakeward version serving this endpoint.",
    ["component", "version"],
)  # fmt: skip

# --- capture -------------------------------------------------------------------------------------

CAPTURE_EVENTS = Counter(
    "lakeward_capture_events_total", "Change events committed to Kafka by capture.",
    ["pipeline", "collection", "op"],
)  # fmt: skip
CAPTURE_BATCHES = Counter(
    "lakeward_capture_batches_total", "Kafka transactions of change events capture committed.",
    ["pipeline"],
)  # fmt: skip
CAPTURE_BATCH_DURATION = Histogram(
    "lakeward_capture_batch_duration_seconds",
    "Publish and commit time of one capture transaction (events plus checkpoint).",
    ["pipeline"], buckets=BATCH_BUCKETS,
)  # fmt: skip
CAPTURE_ERRORS = Counter(
    "lakeward_capture_errors_total", "Capture activity attempts that ended with an error.",
    ["pipeline", "error"],
)  # fmt: skip
CAPTURE_LAG = Gauge(
    "lakeward_capture_lag_seconds",
    "Now minus the source cluster time of the newest change capture committed (0 while caught up).",
    ["pipeline"],
)  # fmt: skip

# --- apply ---------------------------------------------------------------------------------------

APPLY_RECORDS = Counter(
    "lakeward_apply_records_total", "Changes applied to the current-state table (before the "
    "per-key collapse; dead letters and already-applied records excluded).",
    ["pipeline", "collection", "op"],
)  # fmt: skip
APPLY_BATCHES = Counter(
    "lakeward_apply_batches_total", "Micro-batches committed to the current-state table.",
    ["pipeline", "collection"],
)  # fmt: skip
APPLY_BATCH_DURATION = Histogram(
    "lakeward_apply_batch_duration_seconds",
    "One apply activity's micro-batch, from reading Kafka to the Delta commit.",
    ["pipeline", "collection"], buckets=BATCH_BUCKETS,
)  # fmt: skip
APPLY_COMMIT_DURATION = Histogram(
    "lakeward_apply_commit_duration_seconds",
    "The MERGE and Delta commit of one micro-batch.",
    ["pipeline", "collection"], buckets=BATCH_BUCKETS,
)  # fmt: skip
APPLY_ERRORS = Counter(
    "lakeward_apply_errors_total", "Apply attempts that ended with an error.",
    ["pipeline", "collection", "error"],
)  # fmt: skip
APPLY_BATCHES_IN_FLIGHT = Gauge(
    "lakeward_apply_batches_in_flight", "Apply activities running in this worker.", ["pipeline"]
)
FRESHNESS_LAG = Gauge(
    "lakeward_freshness_lag_seconds",
    "Delta commit time minus the source commit time of the newest change of the last batch.",
    ["pipeline", "collection"],
)  # fmt: skip
FRESHNESS = Histogram(
    "lakeward_freshness_seconds",
    "Per committed batch: Delta commit time minus the source commit time of its oldest change.",
    ["pipeline", "collection"], buckets=FRESHNESS_BUCKETS,
)  # fmt: skip
KAFKA_BACKLOG = Gauge(
    "lakeward_kafka_backlog_records",
    "Records in the topic partition past the last batch apply read (estimate).",
    ["pipeline", "collection", "partition"],
)  # fmt: skip
DEAD_LETTERS = Counter(
    "lakeward_dead_letters_total", "Changes written to the dead-letter table, by reason.",
    ["pipeline", "collection", "reason"],
)  # fmt: skip
SCHEMA_EVOLUTIONS = Counter(
    "lakeward_schema_evolutions_total",
    "Schema events of the current-state table: columns added, columns widened, documents kept "
    "as Extended JSON or coerced by the schema policy.",
    ["pipeline", "collection", "kind"],
)  # fmt: skip
TYPE_CONVERSION_FAILURES = Counter(
    "lakeward_type_conversion_failures_total",
    "Documents the type factory could not store or convert (dead-lettered).",
    ["pipeline", "collection"],
)  # fmt: skip

# --- snapshot ------------------------------------------------------------------------------------

SNAPSHOT_DOCUMENTS = Counter(
    "lakeward_snapshot_documents_total", "Documents the snapshot copied into Kafka.",
    ["pipeline", "collection"],
)  # fmt: skip
SNAPSHOT_PROGRESS = Gauge(
    "lakeward_snapshot_progress_ratio",
    "Share of the snapshot's ranges this worker finished (sum over workers: the whole).",
    ["pipeline", "collection"],
)  # fmt: skip

# --- reconcile -----------------------------------------------------------------------------------

RECONCILE_RUNS = Counter(
    "lakeward_reconcile_runs_total", "Finished reconciliation runs, by outcome.",
    ["pipeline", "outcome"],
)  # fmt: skip
RECONCILE_DURATION = Histogram(
    "lakeward_reconcile_duration_seconds", "Duration of a reconciliation run.",
    ["pipeline"], buckets=RECONCILE_BUCKETS,
)  # fmt: skip
RECONCILE_DOCUMENTS = Counter(
    "lakeward_reconcile_documents_total", "Documents compared by reconciliation runs.",
    ["pipeline"],
)  # fmt: skip
RECONCILE_DIFFERENCES = Gauge(
    "lakeward_reconcile_differences",
    "Persistent differences the last finished (not failed) run found, by kind.",
    ["pipeline", "kind"],
)  # fmt: skip

# --- resilience (recorded by the circuit breakers, retries and bulkhead) -------------------------

CIRCUIT_BREAKER_STATE = Gauge(
    "lakeward_circuit_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
    ["dependency"],
)  # fmt: skip
CIRCUIT_BREAKER_TRANSITIONS = Counter(
    "lakeward_circuit_breaker_transitions_total", "Circuit breaker changes, by the state entered.",
    ["dependency", "state"],
)  # fmt: skip
RETRIES = Counter(
    "lakeward_retries_total", "Retries inside an activity (not Temporal's activity retries).",
    ["dependency"],
)  # fmt: skip
PIPELINE_IN_FLIGHT = Gauge(
    "lakeward_pipeline_in_flight", "Activities running for the pipeline in this worker.",
    ["pipeline"],
)  # fmt: skip
BULKHEAD_REJECTIONS = Counter(
    "lakeward_bulkhead_rejections_total",
    "Activities refused because the pipeline had its cap of in-flight work.", ["pipeline"],
)  # fmt: skip

# --- worker pools --------------------------------------------------------------------------------

POOL_IN_USE = Gauge(
    "lakeward_pool_in_use", "Activities running on the task queue's pool in this worker.",
    ["queue"],
)  # fmt: skip
POOL_SIZE = Gauge("lakeward_pool_size", "Slots of the task queue's pool in this worker.", ["queue"])

# --- API -----------------------------------------------------------------------------------------

API_REQUESTS = Counter(
    "lakeward_api_requests_total", "API requests answered, by route template and status.",
    ["method", "route", "status"],
)  # fmt: skip
API_REQUEST_DURATION = Histogram(
    "lakeward_api_request_duration_seconds", "API request duration, to the end of the response.",
    ["method", "route"], buckets=REQUEST_BUCKETS,
)  # fmt: skip
API_REQUESTS_IN_FLIGHT = Gauge("lakeward_api_requests_in_flight", "API requests being served.")
API_REQUESTS_REFUSED = Counter(
    "lakeward_api_requests_refused_total",
    "API requests refused for the API's limits, by reason (rate_limited, body_too_large).",
    ["reason"],
)
for _reason in ("rate_limited", "body_too_large"):  # exposed at 0 from the start
    API_REQUESTS_REFUSED.labels(_reason)


# --- helpers -------------------------------------------------------------------------------------


def set_build_info(component: str) -> None:
    """lakeward_build_info{component, version} = 1 for this process."""
    try:
        version = metadata.version("lakeward")
    except metadata.PackageNotFoundError:
        version = "unknown"
    BUILD_INFO.labels(component, version).set(1)


class _Change(Protocol):
    @property
    def op(self) -> str: ...
    @property
    def collection(self) -> str: ...
    @property
    def source_ts_ms(self) -> int: ...


#: pipeline -> epoch seconds up to which capture is known to have committed the source's changes.
_capture_positions: dict[str, float] = {}


def _capture_lag(pipeline: str) -> float:
    position = _capture_positions.get(pipeline)
    return 0.0 if position is None else max(time.time() - position, 0.0)


def _capture_position(pipeline: str, at_s: float) -> None:
    known = pipeline in _capture_positions
    _capture_positions[pipeline] = max(_capture_positions.get(pipeline, 0.0), at_s)
    if not known:
        # Computed at scrape time: a capture that hangs shows a growing lag, not its last value.
        CAPTURE_LAG.labels(pipeline).set_function(lambda: _capture_lag(pipeline))


def record_capture_batch(pipeline: str, events: Sequence[_Change], seconds: float) -> None:
    """A capture transaction committed `events` in `seconds`."""
    for (collection, op), n in Tally((e.collection, e.op) for e in events).items():
        CAPTURE_EVENTS.labels(pipeline, collection, op).inc(n)
    newest = max((e.source_ts_ms for e in events), default=0)
    CAPTURE_BATCHES.labels(pipeline).inc()
    CAPTURE_BATCH_DURATION.labels(pipeline).observe(seconds)
    if newest:
        _capture_position(pipeline, newest / 1000)


def capture_caught_up(pipeline: str, as_of_s: float) -> None:
    """A read that began at `as_of_s` (epoch seconds) found nothing new, and nothing is in
    flight: capture has everything the source committed before then."""
    _capture_position(pipeline, as_of_s)


def capture_stopped(pipeline: str) -> None:
    """Capture of the pipeline ended in this worker: its lag is no longer this worker's to say
    (a paused pipeline's lag shows in lakeward_freshness_lag_seconds and the backlog)."""
    if _capture_positions.pop(pipeline, None) is not None:
        CAPTURE_LAG.remove(pipeline)


async def capture_errors_counted(pipeline: str, run: Awaitable[T]) -> T:
    """Await capture's `run`, counting an error that ends it by its exception class
    (cancellation, a pause or stop, is not an error)."""
    try:
        return await run
    except Exception as exc:
        CAPTURE_ERRORS.labels(pipeline, type(exc).__name__).inc()
        raise


class AppliedBatch(Protocol):
    """What apply reports of one micro-batch (lakeward.apply.ApplyOutcome)."""

    table_version: int | None
    ops: dict[str, int]
    dead_letter_reasons: dict[str, int]
    max_source_ts_ms: int
    min_source_ts_ms: int
    committed_at: float
    commit_s: float
    columns_added: int
    columns_widened: int
    coerced: int
    kept_as_json: int
    type_conversion_failures: int
    backlog_by_partition: dict[int, int]


@contextmanager
def apply_attempt(pipeline: str, collection: str) -> Iterator[None]:
    """Around one apply attempt: in flight while it runs; the class of an error that ends it."""
    in_flight = APPLY_BATCHES_IN_FLIGHT.labels(pipeline)
    in_flight.inc()
    try:
        yield
    except Exception as exc:
        APPLY_ERRORS.labels(pipeline, collection, type(exc).__name__).inc()
        raise
    finally:
        in_flight.dec()


def record_apply(pipeline: str, collection: str, batch: AppliedBatch, seconds: float) -> None:
    """One micro-batch apply read in `seconds`: its dead letters and backlog, and, if it
    committed, its changes, durations, schema events and freshness."""
    for partition, records in batch.backlog_by_partition.items():
        KAFKA_BACKLOG.labels(pipeline, collection, str(partition)).set(records)
    for reason, n in batch.dead_letter_reasons.items():
        DEAD_LETTERS.labels(pipeline, collection, reason).inc(n)
    if batch.type_conversion_failures:
        TYPE_CONVERSION_FAILURES.labels(pipeline, collection).inc(batch.type_conversion_failures)
    if batch.table_version is None:
        return
    labels = (pipeline, collection)
    for op, n in batch.ops.items():
        APPLY_RECORDS.labels(*labels, op).inc(n)
    APPLY_BATCHES.labels(*labels).inc()
    APPLY_BATCH_DURATION.labels(*labels).observe(seconds)
    APPLY_COMMIT_DURATION.labels(*labels).observe(batch.commit_s)
    _count_schema_events(labels, batch)
    # Clocks of the source and this worker may disagree a little: a delay is never negative.
    if batch.max_source_ts_ms:
        newest = batch.committed_at - batch.max_source_ts_ms / 1000
        FRESHNESS_LAG.labels(*labels).set(max(newest, 0.0))
    if batch.min_source_ts_ms:
        oldest = batch.committed_at - batch.min_source_ts_ms / 1000
        FRESHNESS.labels(*labels).observe(max(oldest, 0.0))


def _count_schema_events(labels: tuple[str, str], batch: AppliedBatch) -> None:
    kinds = {
        "column_added": batch.columns_added,
        "column_widened": batch.columns_widened,
        "kept_as_json": batch.kept_as_json,
        "coerced": batch.coerced,
    }
    for kind, n in kinds.items():
        if n:
            SCHEMA_EVOLUTIONS.labels(*labels, kind).inc(n)


#: (pipeline, collection) -> (snapshot run, the range indexes this worker finished in it).
_snapshot_ranges: dict[tuple[str, str], tuple[str, set[int]]] = {}


def record_snapshot_range(
    pipeline: str, collection: str, run: str, index: int, ranges: int, documents: int
) -> None:
    """A snapshot range (`index` of `ranges`, in snapshot run `run`) copied `documents`."""
    SNAPSHOT_DOCUMENTS.labels(pipeline, collection).inc(documents)
    if ranges <= 0:
        return  # a workflow started before the range count was passed: no ratio to give
    key = (pipeline, collection)
    current = _snapshot_ranges.get(key)
    if current is None or current[0] != run:
        current = (run, set())
        _snapshot_ranges[key] = current
    current[1].add(index)
    SNAPSHOT_PROGRESS.labels(pipeline, collection).set(len(current[1]) / ranges)


def record_reconcile(
    pipeline: str,
    outcome: str,
    seconds: float,
    documents: int,
    differences: Mapping[str, int],
) -> None:
    """A finished reconciliation run; a failed run leaves the last differences standing."""
    RECONCILE_RUNS.labels(pipeline, outcome).inc()
    RECONCILE_DURATION.labels(pipeline).observe(max(seconds, 0.0))
    RECONCILE_DOCUMENTS.labels(pipeline).inc(documents)
    if outcome != "failed":
        for kind, n in differences.items():
            RECONCILE_DIFFERENCES.labels(pipeline, kind).set(n)


def record_capture_dead_letters(pipeline: str, letters: Mapping[tuple[str, str], int]) -> None:
    """Capture's dead letters ((collection, reason) -> count) committed to the table."""
    for (collection, reason), n in letters.items():
        DEAD_LETTERS.labels(pipeline, collection, reason).inc(n)
