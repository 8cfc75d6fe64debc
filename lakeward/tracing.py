"""OpenTelemetry tracing shared by the worker, the API and the engine (docs/observability.md).

One tracer provider per process, built from the settings (exporter, endpoint, sampling) and
installed here, so the engine's own spans (a capture micro-batch, an apply micro-batch) land in
the same provider as Temporal's interceptor spans. Nothing here imports Temporal or FastAPI: the
worker and the API wrap the provider in their own interceptor or middleware.

A micro-batch crosses Kafka as W3C trace context in the record headers (`traceparent`,
`tracestate`): capture writes its batch span's context into every record of the batch, apply
reads it back and starts its batch span as a child of it. The envelope itself never changes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from lakeward.settings import Settings

__all__ = [
    "TRACER_NAME",
    "TRACE_HEADERS",
    "RateLimitingSampler",
    "batch_headers",
    "ending",
    "install",
    "installed_provider",
    "root_sampler",
    "start_apply_span",
    "start_capture_span",
    "tracer",
    "tracer_provider",
]

#: The Kafka record headers that carry a micro-batch's trace context (W3C Trace Context).
TRACE_HEADERS = ("traceparent", "tracestate")
#: An apply batch reading many capture batches links at most this many of them.
MAX_LINKS = 32
TRACER_NAME = "lakeward"

_propagator = TraceContextTextMapPropagator()
_installed: TracerProvider | None = None


class RateLimitingSampler(Sampler):
    """Keeps at most `per_second` new traces per second (a token bucket holding one second's
    worth), after `then` (the probabilistic ratio) has kept them.

    Written here because the OpenTelemetry Python SDK ships no rate-limiting sampler (Jaeger's
    remote sampler does, but needs a sampling server). `clock` is injectable for tests.
    """

    def __init__(
        self,
        per_second: float,
        then: Sampler | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_second <= 0:
            raise ValueError(f"per_second must be positive, not {per_second}")
        self.per_second = per_second
        self.then = then
        self._clock = clock
        self._capacity = max(per_second, 1.0)
        self._tokens = self._capacity
        self._last = clock()
        self._lock = threading.Lock()

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        if self.then is not None:
            first = self.then.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )
            if not first.decision.is_sampled():
                return first
        if self._take():
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, trace_state)
        return SamplingResult(Decision.DROP, None, trace_state)

    def _take(self) -> bool:
        with self._lock:
            now = self._clock()
            elapsed = max(now - self._last, 0.0)
            self._last = now
            self._tokens = min(self._capacity, self._tokens + elapsed * self.per_second)
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False

    def get_description(self) -> str:
        then = f", then={self.then.get_description()}" if self.then else ""
        return f"RateLimitingSampler{{{self.per_second}/s{then}}}"


def root_sampler(settings: Settings) -> Sampler:
    """The sampler for spans that start a trace: the ratio, then the rate limit if one is set.
    Spans with a parent follow the parent's decision (ParentBased), so a kept trace stays whole."""
    ratio = TraceIdRatioBased(settings.traces_sample_ratio)
    if settings.traces_rate_limit_per_s > 0:
        return ParentBased(RateLimitingSampler(settings.traces_rate_limit_per_s, then=ratio))
    return ParentBased(ratio)


def tracer_provider(settings: Settings, service_name: str) -> TracerProvider | None:
    """The tracer provider the settings ask for; None when tracing is off."""
    exporter: SpanExporter
    if settings.traces_exporter == "none":
        return None
    if settings.traces_exporter == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.traces_otlp_endpoint)
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: service_name}), sampler=root_sampler(settings)
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def install(provider: TracerProvider | None) -> None:
    """Make `provider` the one the engine's spans use (None: back to OpenTelemetry's global one,
    a no-op unless something else configured it). Not OpenTelemetry's global provider itself:
    that can be set once per process, and tests install their in-memory one per test."""
    global _installed
    _installed = provider


def installed_provider() -> TracerProvider | None:
    return _installed


def tracer() -> trace.Tracer:
    if _installed is not None:
        return _installed.get_tracer(TRACER_NAME)
    return trace.get_tracer(TRACER_NAME)


def batch_headers(span: Span) -> tuple[tuple[str, bytes], ...]:
    """The Kafka headers that carry `span`'s context; empty when tracing is off."""
    if not span.get_span_context().is_valid:
        return ()
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=trace.set_span_in_context(span))
    return tuple((k, v.encode()) for k, v in carrier.items() if k in TRACE_HEADERS)


def start_capture_span(
    pipeline: str, collections: Iterable[str], events: int, name: str = "capture batch"
) -> Span:
    """The span of one capture micro-batch (or a snapshot's, `name` "snapshot batch"): from its
    read to its Kafka commit.

    It starts a trace of its own, linked to the capture activity's span: a capture activity
    runs for days, and one trace per micro-batch is what can be sampled, rate-limited and read.
    Not made current (the next batch is read while this one commits); end it with `ending`.
    """
    if events == 0:
        return trace.INVALID_SPAN  # an idle checkpoint commit: nothing worth a trace
    activity = trace.get_current_span().get_span_context()
    links = [Link(activity)] if activity.is_valid else []
    return tracer().start_span(
        name,
        context=otel_context.Context(),  # a root: not a child of the activity's span
        kind=SpanKind.PRODUCER,
        links=links,
        attributes={
            "lakeward.pipeline": pipeline,
            "lakeward.collections": sorted(set(collections)),
            "lakeward.records": events,
            "messaging.system": "kafka",
            "messaging.operation.type": "publish",
        },
    )


def start_apply_span(
    pipeline: str,
    collection: str,
    headers: Iterable[Sequence[tuple[str, bytes]]],
    records: int,
    start_time_ns: int | None = None,
) -> Span:
    """The span of one apply micro-batch, from its Kafka read to its Delta commit.

    Its parent is the capture batch of the first record that carries trace context, so a
    micro-batch is one trace from capture to the Delta commit; the other capture batches it
    read (up to MAX_LINKS) and the apply activity's own span are links. Records without trace
    context (Debezium's, or written while tracing was off) leave the activity's span as parent.
    """
    contexts = _capture_contexts(headers)
    current = trace.get_current_span().get_span_context()
    links = [Link(c) for c in contexts[1 : MAX_LINKS + 1]]
    if contexts:
        parent = trace.set_span_in_context(trace.NonRecordingSpan(contexts[0]))
        if current.is_valid:
            links.append(Link(current))
    else:
        parent = otel_context.get_current()
    return tracer().start_span(
        "apply batch",
        context=parent,
        kind=SpanKind.CONSUMER,
        links=links,
        start_time=start_time_ns,
        attributes={
            "lakeward.pipeline": pipeline,
            "lakeward.collection": collection,
            "lakeward.records": records,
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
        },
    )


def _capture_contexts(
    headers: Iterable[Sequence[tuple[str, bytes]]],
) -> list[trace.SpanContext]:
    """The distinct valid span contexts in records' headers, in first-seen order."""
    seen: dict[tuple[int, int], trace.SpanContext] = {}
    last: Sequence[tuple[str, bytes]] | None = None
    for record_headers in headers:
        # A batch's records share their headers: parse each distinct set once.
        if not record_headers or record_headers == last:
            continue
        last = record_headers
        carrier = _carrier(record_headers)
        if not carrier:
            continue
        context = trace.get_current_span(_propagator.extract(carrier)).get_span_context()
        if context.is_valid:
            seen.setdefault((context.trace_id, context.span_id), context)
    return list(seen.values())


def _carrier(headers: Sequence[tuple[str, bytes]]) -> dict[str, str]:
    return {k: v.decode("ascii", "replace") for k, v in headers if k in TRACE_HEADERS and v}


@contextmanager
def ending(span: Span, current: bool = False) -> Iterator[Span]:
    """End `span` when the block ends (`current`: the block's logs and child spans belong to
    it). An exception marks it failed with the exception's type only: a driver's message may
    quote what it was sent, so it is neither recorded nor exported."""
    try:
        if current:
            with trace.use_span(
                span, end_on_exit=False, record_exception=False, set_status_on_exception=False
            ):
                yield span
        else:
            yield span
    except BaseException as exc:
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        span.set_attribute("error.type", type(exc).__name__)
        raise
    finally:
        span.end()
