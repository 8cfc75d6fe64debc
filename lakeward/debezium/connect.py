"""A small async client for the Kafka Connect REST API (the calls Lakeward needs, nothing more).

Errors are translated at this edge: no answer, 5xx and 409 (rebalance in progress) raise the
retryable ConnectUnavailableError; config validation problems raise ConnectorConfigError with one
message per field; other refusals raise ConnectRequestError. Every message is redacted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from lakeward.debezium.errors import (
    ConnectorConfigError,
    ConnectRequestError,
    ConnectUnavailableError,
    Redactor,
    SourceUnreachableError,
)

__all__ = ["ConnectClient", "ConnectorStatus", "TaskStatus"]

#: Connect validates a MongoDB connector by connecting to MongoDB (up to its server selection
#: timeout, 30 s by default) within `connection.validation.timeout.ms` (60 s): wait longer.
VALIDATE_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class TaskStatus:
    id: int
    state: str  # UNASSIGNED, RUNNING, PAUSED, STOPPED, FAILED, RESTARTING
    worker_id: str = ""
    trace: str = ""


@dataclass(frozen=True)
class ConnectorStatus:
    name: str
    state: str
    worker_id: str = ""
    trace: str = ""
    tasks: list[TaskStatus] = field(default_factory=list)

    @property
    def is_running(self) -> bool:
        """The connector and at least one task RUNNING, no task in another state."""
        return (
            self.state == "RUNNING"
            and bool(self.tasks)
            and all(t.state == "RUNNING" for t in self.tasks)
        )


class ConnectClient:
    """Async Kafka Connect REST client; use as ``async with ConnectClient(url) as client``.

    `secrets` are redacted from every error message. `transport` lets tests swap the network.
    """

    def __init__(
        self,
        base_url: str,
        *,
        secrets: Iterable[str] = (),
        timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._redact = Redactor(secrets)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=timeout_s,
            transport=transport,
            headers={"Accept": "application/json"},
        )

    async def __aenter__(self) -> ConnectClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ---- connector plugins ---------------------------------------------------------------------

    async def plugin_classes(self) -> set[str]:
        response = await self._request("GET", "/connector-plugins")
        return {p.get("class", "") for p in response.json()}

    async def validate(self, config: Mapping[str, str]) -> list[str]:
        """Connect's own validation of a config: one ``field: message`` per problem.

        Called before PUT because Connect 4.3 answers a PUT whose validation fails with a 500
        (a NullPointerException over Debezium's internal fields) instead of the 400 listing them.
        """
        plugin = config["connector.class"].rsplit(".", 1)[-1]
        response = await self._request(
            "PUT",
            f"/connector-plugins/{quote(plugin, safe='')}/config/validate",
            json=dict(config),
            timeout=VALIDATE_TIMEOUT_S,
        )
        problems = []
        for item in response.json().get("configs", []):
            value = item.get("value") or {}
            for error in value.get("errors") or []:
                problems.append(self._redact(f"{value.get('name')}: {error}"))
        return problems

    # ---- connectors ----------------------------------------------------------------------------

    async def connector_config(self, name: str) -> dict[str, str] | None:
        """The stored config (it holds secrets: never log it), or None if there is none."""
        response = await self._request("GET", f"/connectors/{_quote(name)}/config", missing=True)
        return None if response is None else dict(response.json())

    async def put_connector_config(self, name: str, config: Mapping[str, str]) -> bool:
        """Create or update a connector; True when it was created."""
        response = await self._request(
            "PUT",
            f"/connectors/{_quote(name)}/config",
            json=dict(config),
            timeout=VALIDATE_TIMEOUT_S,
        )
        return response.status_code == 201

    async def status(self, name: str) -> ConnectorStatus | None:
        response = await self._request("GET", f"/connectors/{_quote(name)}/status", missing=True)
        if response is None:
            return None
        raw = response.json()
        connector = raw.get("connector") or {}
        return ConnectorStatus(
            name=raw.get("name", name),
            state=connector.get("state", "UNASSIGNED"),
            worker_id=connector.get("worker_id", ""),
            trace=connector.get("trace") or "",
            tasks=[
                TaskStatus(
                    id=int(t.get("id", 0)),
                    state=t.get("state", "UNASSIGNED"),
                    worker_id=t.get("worker_id", ""),
                    trace=t.get("trace") or "",
                )
                for t in raw.get("tasks") or []
            ],
        )

    async def restart(self, name: str, *, only_failed: bool = True) -> None:
        """Restart the connector and its (failed) tasks (Connect >= 3.0)."""
        await self._request(
            "POST",
            f"/connectors/{_quote(name)}/restart",
            params={"includeTasks": "true", "onlyFailed": str(only_failed).lower()},
        )

    async def resume(self, name: str) -> None:
        """Resume a PAUSED or STOPPED connector."""
        await self._request("PUT", f"/connectors/{_quote(name)}/resume")

    async def offsets(self, name: str) -> list[dict[str, Any]]:
        """The committed source offsets (Connect >= 3.5), [] before the first commit."""
        response = await self._request("GET", f"/connectors/{_quote(name)}/offsets", missing=True)
        return [] if response is None else list(response.json().get("offsets") or [])

    async def delete(self, name: str) -> bool:
        """Delete a connector (its offsets stay in Connect's offsets topic); False if absent."""
        response = await self._request("DELETE", f"/connectors/{_quote(name)}", missing=True)
        return response is not None

    # ---- plumbing ------------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        missing: bool = False,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """The response, None for a 404 when `missing` is allowed, or a translated error."""
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        try:
            response = await self._http.request(method, path, **kwargs, **extra)
        except httpx.TransportError as exc:
            raise ConnectUnavailableError(
                f"Kafka Connect at {self.base_url} did not answer {method} {path}: "
                f"{self._redact(str(exc)) or type(exc).__name__}; check that the Connect worker "
                "runs and the URL (setting connect_url) is right"
            ) from exc
        if response.status_code < 300:
            return response
        if response.status_code == 404 and missing:
            return None
        message = self._redact(_error_message(response))
        where = f"Kafka Connect {method} {path} answered {response.status_code}"
        if response.status_code == 409 or response.status_code >= 500:
            raise ConnectUnavailableError(f"{where}: {message}")
        if response.status_code == 400:
            if _is_unreachable_source(message):
                raise SourceUnreachableError(f"{where}: {message}")
            raise ConnectorConfigError(f"{where}: {message}", messages=[message])
        raise ConnectRequestError(f"{where}: {message}")


def _quote(name: str) -> str:
    return quote(name, safe="")


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return response.text[:500]


def _is_unreachable_source(message: str) -> bool:
    """Validation failed only because MongoDB did not answer (not because it refused us)."""
    lowered = message.lower()
    return "unable to connect" in lowered and "authenticat" not in lowered
