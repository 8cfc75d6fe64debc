"""What can go wrong with a Debezium connector, split by whether retrying can help.

Every error carries `retryable`: the capture activity maps it to a Temporal ApplicationError with
`non_retryable = not retryable` and the class name as its type. Messages never contain the MongoDB
connection string or its password (see `Redactor`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar
from urllib.parse import unquote, urlsplit

__all__ = [
    "ConnectRequestError",
    "ConnectUnavailableError",
    "ConnectorConfigError",
    "ConnectorFailedError",
    "DebeziumError",
    "Redactor",
    "SourceUnreachableError",
]


class DebeziumError(RuntimeError):
    """Base class; `retryable` says whether the same call may succeed later."""

    retryable: ClassVar[bool] = False


class ConnectUnavailableError(DebeziumError):
    """Kafka Connect did not answer, answered 5xx, or is rebalancing (409): retry later."""

    retryable = True


class SourceUnreachableError(DebeziumError):
    """Connect's validation could not reach MongoDB from the worker: retry later."""

    retryable = True


class ConnectorConfigError(DebeziumError):
    """The connector config is invalid; `messages` lists each problem (``field: message``)."""

    def __init__(self, message: str, messages: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.messages = list(messages)


class ConnectorFailedError(DebeziumError):
    """The connector or a task is FAILED and one automatic restart did not fix it."""

    def __init__(self, message: str, *, connector: str, task: int | None, trace: str) -> None:
        super().__init__(message)
        self.connector = connector
        self.task = task
        self.trace = trace


class ConnectRequestError(DebeziumError):
    """Connect refused a request in a way retrying will not fix (e.g. 401, 403, 404, 405)."""


class Redactor:
    """Replaces secrets (a connection string, its password, its user info) in any text.

    Connect echoes config values in some errors and Debezium puts connection details in task
    traces; everything Lakeward raises or logs from them goes through here first.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        needles: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            needles.add(secret)
            try:
                parts = urlsplit(secret)
            except ValueError:
                continue
            if parts.password:
                needles.update({parts.password, unquote(parts.password)})
                userinfo = parts.netloc.rpartition("@")[0]
                needles.update({userinfo, unquote(userinfo)})
        # Longest first, so a URI is replaced whole before its password is looked for.
        self._needles = sorted((n for n in needles if n), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for needle in self._needles:
            text = text.replace(needle, "***")
        return text
