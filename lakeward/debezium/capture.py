"""The `debezium` capture strategy: Lakeward configures a Debezium MongoDB connector in Kafka
Connect and supervises it; Connect and Debezium move the changes into Kafka.

`DebeziumCapture.run` creates or updates the connector (idempotently), resumes it if someone
paused or stopped it, then polls its status every `poll_s` seconds and reports progress through
`on_batch`, which the capture activity turns into heartbeats. A FAILED connector or task is
restarted once; failing again raises ConnectorFailedError. Cancellation and `should_stop` leave
the connector running: pausing a Lakeward pipeline stops apply, not capture into Kafka, exactly
as with Lakeward's own capture. Stopping a pipeline deletes the connector (`delete_connector`).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from bson import BSON

from lakeward.capture import CaptureProgress
from lakeward.debezium.config import DebeziumOptions, connector_config, connector_name
from lakeward.debezium.connect import ConnectClient, ConnectorStatus
from lakeward.debezium.errors import (
    ConnectorConfigError,
    ConnectorFailedError,
    ConnectUnavailableError,
    Redactor,
    SourceUnreachableError,
)
from lakeward.events import make_seq
from lakeward.kafka.admin import ensure_topic
from lakeward.kafka.security import KafkaTarget
from workflows.spec import PipelineSpec

__all__ = [
    "DebeziumCapture",
    "DebeziumProgress",
    "delete_connector",
    "resume_token_cluster_time",
]

_log = logging.getLogger(__name__)

#: A restarted connector gets this long to leave FAILED before a FAILED status counts again.
RESTART_SETTLE_S = 15.0


@dataclass
class DebeziumProgress(CaptureProgress):
    """CaptureProgress plus the connector's state.

    `events` and `batches` stay 0: Connect does not report record counts over REST. `last_seq`
    is the seq of the cluster time in the connector's committed offsets (position 0): changes up
    to there are in Kafka.
    """

    connector: str = ""
    #: created, updated or unchanged: what the run did to the connector's config.
    config_action: str = ""
    connector_state: str = ""
    #: task id (as a string, for JSON) -> state
    task_states: dict[str, str] = field(default_factory=dict)
    restarts: int = 0
    connect_reachable: bool = True


OnDebeziumBatch = Callable[[CaptureProgress], Awaitable[None] | None]


class DebeziumCapture:
    """Runs the `debezium` strategy for one pipeline: configure, then supervise.

    `connect_url` is the Kafka Connect REST URL. `prepare`, when given, runs first (e.g. turning
    on pre-images for the collections). `transport` lets tests replace the network.
    """

    def __init__(
        self,
        spec: PipelineSpec,
        mongo_uri: str,
        bootstrap: KafkaTarget,
        topic_prefix: str,
        *,
        connect_url: str,
        start_at: float | None = None,
        options: DebeziumOptions | None = None,
        partitions: int = 3,
        poll_s: float = 2.0,
        stable_s: float = 60.0,
        unavailable_grace_s: float = 30.0,
        offsets_every_s: float = 10.0,
        prepare: Callable[[], Awaitable[None]] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.spec = spec
        self.name = connector_name(spec)
        # Connect owns the producer: its transactional id is `<group.id>-<connector>-<task>`,
        # and Connect fences zombie tasks itself. This names the connector for the activity.
        self.transactional_id = f"connect:{self.name}"
        self._mongo_uri = mongo_uri
        self._bootstrap = bootstrap
        self._prefix = topic_prefix
        self._connect_url = connect_url
        self._start_at = start_at
        self._options = options or DebeziumOptions()
        self._partitions = partitions
        self._poll_s = poll_s
        self._stable_s = stable_s
        self._unavailable_grace_s = unavailable_grace_s
        self._offsets_every_s = offsets_every_s
        self._prepare = prepare
        self._transport = transport
        self._redact = Redactor([mongo_uri])

    def topics(self) -> dict[str, str]:
        return {c: self.spec.topic(self._prefix, c) for c in self.spec.source.collections}

    def config(self) -> dict[str, str]:
        """The derived connector config; it holds the MongoDB URI, so never log it."""
        return connector_config(
            self.spec, self._mongo_uri, self._prefix, start_at=self._start_at, options=self._options
        )

    def client(self) -> ConnectClient:
        return ConnectClient(
            self._connect_url, secrets=[self._mongo_uri], transport=self._transport
        )

    async def ensure_connector(self, client: ConnectClient) -> str:
        """Create or update the connector so it runs the derived config.

        Returns ``created``, ``updated`` or ``unchanged``; an unchanged config is not PUT again
        (a PUT restarts the connector). The data topics are created first, with Lakeward's
        partition count. A PAUSED or STOPPED connector is resumed.
        """
        config = self.config()
        current = await client.connector_config(self.name)
        if current is not None and _same_config(current, config):
            action = "unchanged"
            await asyncio.to_thread(self._ensure_topics)
        else:
            problems = await client.validate({"name": self.name, **config})
            if problems:
                self._raise_invalid(problems)
            # Before the connector exists, so it never writes into a topic Connect created.
            await asyncio.to_thread(self._ensure_topics)
            created = await client.put_connector_config(self.name, config)
            action = "created" if created else "updated"
        status = await client.status(self.name)
        if status is not None and status.state in ("PAUSED", "STOPPED"):
            _log.warning("resuming %s connector %s", status.state.lower(), self.name)
            await client.resume(self.name)
        _log.info("debezium connector %s %s", self.name, action)
        return action

    async def run(
        self, on_batch: OnDebeziumBatch, should_stop: Callable[[], bool] = lambda: False
    ) -> DebeziumProgress:
        if self._prepare is not None:
            await self._prepare()
        progress = DebeziumProgress(connector=self.name)
        async with self.client() as client:
            progress.config_action = await self.ensure_connector(client)
            supervisor = _Supervisor(self, client, progress)
            await supervisor.read_offsets(initial=True)
            while not should_stop():
                await supervisor.check()
                result = on_batch(progress)
                if result is not None:
                    await result
                if should_stop():
                    break
                await asyncio.sleep(self._poll_s)
        return progress

    async def delete_connector(self) -> bool:
        """Delete this pipeline's connector (the `stop` path); False if there was none."""
        async with self.client() as client:
            return await client.delete(self.name)

    def _ensure_topics(self) -> None:
        # Created here with Lakeward's partition count, as its own capture does; Connect would
        # create them with topic.creation.default.partitions otherwise.
        for topic in self.topics().values():
            ensure_topic(self._bootstrap, topic, partitions=self._partitions)

    def _raise_invalid(self, problems: list[str]) -> None:
        only_unreachable = all(
            p.startswith("mongodb.connection.string: Unable to connect")
            and "authenticat" not in p.lower()
            for p in problems
        )
        listed = "; ".join(problems)
        if only_unreachable:
            raise SourceUnreachableError(
                f"Kafka Connect could not reach MongoDB to validate connector {self.name}: "
                f"{listed}. Retrying; check that the Connect worker can reach the source URI"
            )
        raise ConnectorConfigError(
            f"Kafka Connect rejected the config of connector {self.name} "
            f"({len(problems)} problem(s)): {listed}",
            messages=problems,
        )


class _Supervisor:
    """One run's view of the connector: status checks, one restart per failure episode."""

    def __init__(
        self, capture: DebeziumCapture, client: ConnectClient, progress: DebeziumProgress
    ) -> None:
        self.capture = capture
        self.client = client
        self.progress = progress
        self.restart_available = True
        self.restarted_at: float | None = None
        self.seen_healthy_since_restart = False
        self.running_since: float | None = None
        self.unavailable_since: float | None = None
        self.offsets_read_at = 0.0

    async def check(self) -> None:
        now = time.monotonic()
        try:
            status = await self.client.status(self.capture.name)
            if status is None:
                if await self.client.connector_config(self.capture.name) is not None:
                    # Just created: Connect has not written its first status yet.
                    self.progress.connector_state, self.progress.task_states = "UNASSIGNED", {}
                    return
                # Deleted behind our back while the pipeline should capture: put it back.
                _log.warning("debezium connector %s is gone; creating it again", self.capture.name)
                await self.capture.ensure_connector(self.client)
                return
            if now - self.offsets_read_at >= self.capture._offsets_every_s:
                await self.read_offsets()
        except ConnectUnavailableError:
            self.progress.connect_reachable = False
            self.unavailable_since = self.unavailable_since or now
            if now - self.unavailable_since >= self.capture._unavailable_grace_s:
                raise
            return
        self.unavailable_since = None
        self.progress.connect_reachable = True
        self._record(status)
        await self._handle(status, now)

    async def read_offsets(self, initial: bool = False) -> None:
        offsets = await self.client.offsets(self.capture.name)
        self.offsets_read_at = time.monotonic()
        if initial:
            self.progress.resumed_from_checkpoint = bool(offsets)
        for entry in offsets:
            token = (entry.get("offset") or {}).get("resume_token")
            cluster_time = resume_token_cluster_time(token) if token else None
            if cluster_time is not None:
                self.progress.last_seq = max(self.progress.last_seq, make_seq(*cluster_time, 0))

    def _record(self, status: ConnectorStatus) -> None:
        self.progress.connector_state = status.state
        self.progress.task_states = {str(t.id): t.state for t in status.tasks}

    async def _handle(self, status: ConnectorStatus, now: float) -> None:
        failed = _failures(status)
        if not failed:
            if self.restarted_at is not None:
                self.seen_healthy_since_restart = True
            if status.is_running:
                self.running_since = self.running_since or now
                if now - self.running_since >= self.capture._stable_s:
                    self.restart_available = True  # the failure episode is over
            else:
                self.running_since = None
            return
        self.running_since = None
        settling = self.restarted_at is not None and now - self.restarted_at < RESTART_SETTLE_S
        if settling and not self.seen_healthy_since_restart:
            return  # the restart may not show in the status yet
        task, trace = failed[0]
        summary = self.capture._redact(_trace_summary(trace))
        who = "connector" if task is None else f"task {task}"
        if self.restart_available:
            _log.warning(
                "debezium connector %s: %s FAILED (%s); restarting it once",
                self.capture.name,
                who,
                summary,
            )
            await self.client.restart(self.capture.name, only_failed=True)
            self.restart_available = False
            self.restarted_at = now
            self.seen_healthy_since_restart = False
            self.progress.restarts += 1
            return
        raise ConnectorFailedError(
            f"Debezium connector {self.capture.name} (pipeline {self.capture.spec.name!r}): "
            f"{who} FAILED again after one automatic restart: {summary}. Fix the cause (the Kafka "
            "Connect worker's log has the whole trace), then restart the pipeline",
            connector=self.capture.name,
            task=task,
            trace=self.capture._redact(trace),
        )


async def delete_connector(
    connect_url: str,
    spec: PipelineSpec,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> bool:
    """Delete a pipeline's connector (for the workflow's stop path); False if there was none.

    Connect keeps the connector's offsets: a connector created again under the same name resumes
    where this one stopped.
    """
    async with ConnectClient(connect_url, transport=transport) as client:
        return await client.delete(connector_name(spec))


def resume_token_cluster_time(token: str) -> tuple[int, int] | None:
    """(seconds, increment) of the cluster time a Debezium offset's resume token points at.

    Debezium stores the token as base64 BSON ``{"_data": "<hex>"}``; the hex is a KeyString
    whose first value is the cluster time (type byte 0x82, then 4 bytes of seconds and 4 of
    increment). Anything else yields None.
    """
    try:
        data = BSON(base64.b64decode(token)).decode().get("_data")
    except Exception:  # any undecodable token just means "unknown"
        return None
    if not isinstance(data, str) or len(data) < 18 or data[:2].upper() != "82":
        return None
    try:
        return int(data[2:10], 16), int(data[10:18], 16)
    except ValueError:
        return None


def _same_config(current: dict[str, Any], wanted: dict[str, str]) -> bool:
    return {k: v for k, v in current.items() if k != "name"} == wanted


def _failures(status: ConnectorStatus) -> list[tuple[int | None, str]]:
    failed: list[tuple[int | None, str]] = []
    if status.state == "FAILED":
        failed.append((None, status.trace))
    failed += [(t.id, t.trace) for t in status.tasks if t.state == "FAILED"]
    return failed


def _trace_summary(trace: str) -> str:
    """The trace's first line and its root cause (the last ``Caused by:`` line)."""
    lines = [line.strip() for line in trace.splitlines() if line.strip()]
    if not lines:
        return "no trace reported"
    summary = lines[0][:300]
    causes = [line for line in lines if line.startswith("Caused by:")]
    if causes:
        summary += f" ({causes[-1][:300]})"
    return summary
