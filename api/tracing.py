"""Traces of API calls: a SERVER span per request, parent of the Temporal client's spans.

A request that starts or signals a pipeline becomes the root of one trace (or joins the
caller's, from a W3C `traceparent` header): API span -> StartWorkflow / SignalWorkflow (Temporal's
client interceptor) -> RunWorkflow -> StartActivity -> RunActivity in the worker.

A small ASGI middleware rather than opentelemetry-instrumentation-fastapi, which is not a
dependency: it needs only the route template, the status and the propagator.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from temporalio.client import Interceptor
from temporalio.contrib.opentelemetry import TracingInterceptor

from lakeward.tracing import TRACE_HEADERS, TRACER_NAME

__all__ = ["UNTRACED_PATHS", "TracingMiddleware", "client_interceptors"]

#: Probes and scrapes: frequent, and nothing in them is worth a trace.
UNTRACED_PATHS = ("/metrics", "/healthz", "/readyz")

_propagator = TraceContextTextMapPropagator()
_HEADER_NAMES = {h.encode() for h in TRACE_HEADERS}


def client_interceptors(provider: TracerProvider | None) -> list[Interceptor]:
    """The Temporal client's interceptors: tracing when a provider is set."""
    return [TracingInterceptor(provider.get_tracer(TRACER_NAME))] if provider else []


class TracingMiddleware:
    def __init__(self, app: ASGIApp, provider: TracerProvider) -> None:
        self.app = app
        self.tracer = provider.get_tracer(TRACER_NAME)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith(UNTRACED_PATHS):
            await self.app(scope, receive, send)
            return
        carrier = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope.get("headers", ())
            if k.lower() in _HEADER_NAMES
        }
        method = scope.get("method", "GET")
        with self.tracer.start_as_current_span(
            method,
            context=_propagator.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
            record_exception=False,  # exception texts stay out of traces
            set_status_on_exception=False,
        ) as span:
            status: dict[str, Any] = {}

            async def send_and_note(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status["code"] = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, send_and_note)
            except BaseException as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                span.set_attribute("error.type", type(exc).__name__)
                raise
            finally:
                _finish(span, scope, method, status.get("code"))


def _finish(span: trace.Span, scope: Scope, method: str, code: int | None) -> None:
    # The route template, never the raw path, names the span: /v1/pipelines/{name}.
    template = getattr(scope.get("route"), "path", None)
    if isinstance(template, str):
        span.update_name(f"{method} {template}")
        span.set_attribute("http.route", template)
    if code is not None:
        span.set_attribute("http.response.status_code", code)
        if code >= 500:
            span.set_status(Status(StatusCode.ERROR, str(code)))
