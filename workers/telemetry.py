"""Metrics and traces of a worker process: Temporal's SDK metrics next to the process metrics on
one /metrics endpoint, and OpenTelemetry spans of workflows and activities."""

from __future__ import annotations

import logging
import socket
import urllib.request
from collections.abc import Iterator

from opentelemetry.sdk.trace import TracerProvider
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from lakeward.settings import Settings
from lakeward.tracing import TRACER_NAME, tracer_provider

__all__ = [
    "SdkMetricsCollector",
    "sdk_metrics_runtime",
    "tracer_provider",
    "tracing_interceptor",
]

_log = logging.getLogger("lakeward.worker")


def sdk_metrics_runtime(
    settings: Settings, registry: CollectorRegistry = REGISTRY
) -> tuple[Runtime, str]:
    """A Temporal runtime whose Core serves its metrics on a loopback port, merged into
    `registry` (what prometheus_client's /metrics serves). Returns the runtime and the SDK's own
    endpoint URL.

    Why a proxy rather than a bridge through OpenTelemetry: Core's Prometheus exposition keeps
    Temporal's documented metric names (temporal_activity_execution_latency, ...), which the
    SDK dashboards and alerts use; re-recording them elsewhere renames them.
    """
    port = settings.worker_sdk_metrics_port or _free_loopback_port()
    address = f"127.0.0.1:{port}"
    runtime = Runtime(telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=address)))
    url = f"http://{address}/metrics"
    registry.register(SdkMetricsCollector(url))
    return runtime, url


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class SdkMetricsCollector(Collector):
    """Reads Core's metrics endpoint at scrape time and yields its families as they are."""

    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        self.url = url
        self.timeout_s = timeout_s

    def describe(self) -> list[Metric]:
        # Nothing to check for clashes at registration: every SDK metric starts with temporal_.
        return []

    def collect(self) -> Iterator[Metric]:
        # urllib, not httpx: httpx logs every request at INFO, once per scrape.
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout_s) as response:
                text = response.read().decode()
        except OSError as exc:
            # A scrape without SDK metrics beats a failed scrape: the process metrics still count.
            _log.warning("Temporal SDK metrics unavailable at %s: %s", self.url, exc)
            return
        yield from text_string_to_metric_families(text)


def tracing_interceptor(provider: TracerProvider) -> TracingInterceptor:
    """Temporal's tracing interceptor on `provider`: on a client it traces starts, signals and
    queries, and the workers built from that client trace workflow runs and activities."""
    return TracingInterceptor(provider.get_tracer(TRACER_NAME))
