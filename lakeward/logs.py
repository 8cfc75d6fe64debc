"""Structured logs for every Lakeward process (docs/observability.md).

`configure_logging` runs once at process start (`lakeward worker`, `lakeward api`, the CLI) and
routes every record of the standard `logging` module, ours and the libraries' (Temporal,
uvicorn, librdkafka), through one structlog chain: one JSON object per line (or a console line),
with timestamp, level, logger, component, pipeline and collection (bound with `bind`, e.g. by
the worker for the length of an activity), trace_id and span_id of the current OpenTelemetry
span, and the message. Secrets are redacted on the way out, whatever the caller passed.

Code keeps logging through `logging.getLogger(...)`, with fields in `extra={...}`.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Literal, TextIO

import structlog
from opentelemetry import trace
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "COMPONENTS",
    "REDACTED",
    "Summary",
    "bind",
    "configure_logging",
    "redact",
]

Component = Literal["worker", "api", "capture", "apply", "reconcile", "cli"]
COMPONENTS: tuple[Component, ...] = ("worker", "api", "capture", "apply", "reconcile", "cli")
REDACTED = "***"

#: Which component a library logger speaks for, when nothing bound one (longest prefix wins).
_COMPONENT_OF_LOGGER: dict[str, Component] = {
    "lakeward.apply": "apply",
    "lakeward.capture": "capture",
    "lakeward.mongo": "capture",
    "lakeward.debezium": "capture",
    "lakeward.kafka.producer": "capture",
    "lakeward.kafka.consumer": "apply",
    "lakeward.delta": "apply",
    "lakeward.reconcile": "reconcile",
    "lakeward.api": "api",
    "lakeward.worker": "worker",
}

#: A field whose name has one of these words is never logged as it is.
_SECRET_WORDS = {
    "password", "passwd", "pwd", "secret", "token", "key", "apikey", "authorization",
    "credential", "credentials", "cookie", "signature",
}  # fmt: skip
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+")
#: user:password@ in any URI (mongodb://, s3://, https://); the password may hold '@'.
_URI_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*):[^/\s]*@")
#: password=..., token=... in query strings and `key=value` text.
_SECRET_PARAM = re.compile(
    r"((?:^|(?<=[?&;,\s\"'{(]))[\w.-]*(?:password|passwd|pwd|secret|token|api_?key|access_?key|"
    r"signature|credential)[\w.-]*[\"']?\s*[=:]\s*[\"']?)[^&;,\s\"'})]+",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(\bBearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
#: Lakeward's own API tokens (lakeward/tokens.py), wherever they appear.
_API_TOKEN = re.compile(r"\blwt_[A-Za-z0-9_-]+")

_component: Component = "cli"


def redact(value: Any) -> Any:
    """`value` with passwords in URIs, secret parameters, bearer and API tokens masked; dicts
    and lists are walked, and a key named like a secret loses its whole value."""
    if isinstance(value, str):
        value = _URI_PASSWORD.sub(rf"\1:{REDACTED}@", value)
        value = _SECRET_PARAM.sub(rf"\1{REDACTED}", value)
        value = _BEARER.sub(rf"\1{REDACTED}", value)
        return _API_TOKEN.sub(REDACTED, value)
    if isinstance(value, Mapping):
        return {k: (REDACTED if _is_secret_name(k) else redact(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def _is_secret_name(name: object) -> bool:
    if not isinstance(name, str):
        return False
    words = {w.lower() for w in _WORD.findall(name)}
    return bool(words & _SECRET_WORDS)


def bind(**fields: Any) -> None:
    """Add fields (pipeline, collection, component) to every log line of this context: the
    current asyncio task or thread context, and what is started from it."""
    structlog.contextvars.bind_contextvars(**fields)


class Summary:
    """Adds counts up and logs them at info once per `interval_s`: a healthy pipeline says so
    once a minute instead of once per batch (or never)."""

    def __init__(
        self,
        logger: logging.Logger,
        message: str,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.message = message
        self.interval_s = interval_s
        self._clock = clock
        self._since = clock()
        self._counts: Counter[str] = Counter()

    def add(self, **counts: int) -> None:
        self._counts.update(counts)
        now = self._clock()
        if now - self._since >= self.interval_s:
            extra = {**self._counts, "interval_s": round(now - self._since, 1)}
            self.logger.info(self.message, extra=extra)
            self._counts.clear()
            self._since = now


def _add_component(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    # Temporal's workflow logger names the workflow; a pipeline's id is pipeline:<name>.
    workflow = event.get("temporal_workflow")
    if "pipeline" not in event and isinstance(workflow, Mapping):
        workflow_id = str(workflow.get("workflow_id", ""))
        if workflow_id.startswith("pipeline:"):
            event["pipeline"] = workflow_id.removeprefix("pipeline:")
    if "component" not in event:
        name = str(event.get("logger") or "")
        matches = [p for p in _COMPONENT_OF_LOGGER if name == p or name.startswith(p + ".")]
        event["component"] = _COMPONENT_OF_LOGGER[max(matches, key=len)] if matches else _component
    return event


def _add_trace_ids(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event["trace_id"] = format(context.trace_id, "032x")
        event["span_id"] = format(context.span_id, "016x")
    return event


_FIRST = ("timestamp", "level", "component", "pipeline", "collection", "event", "message")


def _order(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """The fields a person scans for first, then the rest as they came."""
    event.pop("color_message", None)  # uvicorn's copy of the message with terminal colours
    first = {k: event[k] for k in _FIRST if k in event}
    return {**first, **{k: v for k, v in event.items() if k not in first}}


def _redact_event(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    for name, value in event.items():
        if name.startswith("_"):
            continue  # structlog's own (the LogRecord); never rendered
        if name not in ("event", "message") and _is_secret_name(name):
            event[name] = REDACTED
        else:
            event[name] = redact(value)
    return event


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time (a test runner swaps it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _: TextIO) -> None:
        pass


def configure_logging(
    component: Component,
    fmt: Literal["json", "console"] = "json",
    level: str = "info",
    stream: TextIO | None = None,
) -> logging.Handler:
    """Route all logging of this process through Lakeward's structured format; returns the
    handler (replacing the one an earlier call installed, and only that one)."""
    global _component
    _component = component
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
    ]
    renderer: list[Processor]
    if fmt == "json":
        renderer = [
            structlog.processors.EventRenamer("message"),
            structlog.processors.JSONRenderer(sort_keys=False),
        ]
    else:
        renderer = [structlog.dev.ConsoleRenderer(colors=False)]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _add_component,
            _add_trace_ids,
            structlog.processors.format_exc_info,
            _redact_event,
            _order,
            *renderer,
        ],
    )
    handler: logging.Handler = (
        logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    )
    handler.setFormatter(formatter)
    handler._lakeward = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_lakeward", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # One line per HTTP request a client sends is noise (the API counts its requests in
    # lakeward_api_requests_total instead).
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return handler
