"""The API's own metrics: requests by method, route template and status, their duration and the
requests in flight (docs/metrics.md), and `GET /metrics` for Prometheus.

The route label is the template a request matched (`/v1/pipelines/{name}`), never the raw path,
so a pipeline name or a scanner's random URLs cannot grow the number of series; a request no
route matched is counted under `unmatched`.
"""

from __future__ import annotations

import time

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest, make_asgi_app
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lakeward.metrics import (
    API_REQUEST_DURATION,
    API_REQUESTS,
    API_REQUESTS_IN_FLIGHT,
    set_build_info,
)

__all__ = ["RequestMetricsMiddleware", "install_metrics"]

UNMATCHED = "unmatched"


def install_metrics(app: FastAPI) -> None:
    """Count every request, and serve the default registry on `/metrics` (and `/metrics/`)."""
    set_build_info("api")
    app.add_middleware(RequestMetricsMiddleware)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    # `/metrics/` as before (content negotiation, gzip); clients of the first slice use it.
    app.mount("/metrics", make_asgi_app())


class RequestMetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): a streamed response is timed to its last byte."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets when the app raises before it answers

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        API_REQUESTS_IN_FLIGHT.inc()
        began = time.perf_counter()
        try:
            await self.app(scope, receive, send_and_record)
        finally:
            API_REQUESTS_IN_FLIGHT.dec()
            # The router left the matched route in the scope (the same dict it was given).
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            method = scope["method"]
            API_REQUESTS.labels(method, route, str(status)).inc()
            API_REQUEST_DURATION.labels(method, route).observe(time.perf_counter() - began)
