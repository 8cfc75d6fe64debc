"""Reading a MongoDB change stream in micro-batches (pymongo's async API)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from bson import Timestamp
from pymongo import AsyncMongoClient
from pymongo.asynchronous.change_stream import AsyncChangeStream
from pymongo.errors import OperationFailure, PyMongoError

from lakeward.events import ChangeEvent, canonical_key, make_seq

__all__ = ["CaptureSourceError", "ChangeBatch", "ChangeStreamReader"]

_OPS = {"insert": "c", "update": "u", "replace": "u", "delete": "d"}


class CaptureSourceError(RuntimeError):
    """MongoDB cannot serve the stream as configured (retrying will not help)."""


@dataclass
class ChangeBatch:
    events: list[ChangeEvent]
    #: Where the next read starts: the last event's token, or the post-batch token when idle.
    resume_token: dict[str, Any] | None
    skipped: int = 0
    counts: dict[str, int] = field(default_factory=dict)


class ChangeStreamReader:
    """Micro-batches of change events from a list of collections of one database.

    A batch closes at `max_records` or `max_wait_s` after its first event, but never inside a
    multi-document transaction (events sharing a cluster time), so a resume never restarts a
    transaction midway and positions within it stay stable.
    """

    def __init__(
        self,
        uri: str,
        database: str,
        collections: list[str],
        resume_token: dict[str, Any] | None = None,
        start_at: float | None = None,
    ) -> None:
        self._uri = uri
        self._database = database
        self._collections = collections
        self._resume_token = resume_token
        # Without a token, start at this wall time (epoch seconds) rather than "now", so changes
        # made after the pipeline was created but before capture started are not missed.
        self._start_at = None if start_at is None else Timestamp(int(start_at), 0)
        self._client: AsyncMongoClient | None = None
        self._stream: AsyncChangeStream | None = None
        self._pending: dict[str, Any] | None = None
        self._last_time: tuple[int, int] | None = None
        self._position = 0

    async def __aenter__(self) -> ChangeStreamReader:
        self._client = AsyncMongoClient(self._uri, serverSelectionTimeoutMS=10_000, tz_aware=True)
        pipeline = [{"$match": {"ns.coll": {"$in": self._collections}}}]
        try:
            self._stream = await self._client[self._database].watch(
                pipeline,
                full_document="updateLookup",
                resume_after=self._resume_token,
                start_at_operation_time=None if self._resume_token else self._start_at,
                max_await_time_ms=50,
            )
        except OperationFailure as exc:
            if exc.code == 40573:  # change streams need a replica set
                raise CaptureSourceError(
                    f"{self._database}: change streams need a replica set or sharded cluster; "
                    "start mongod with --replSet and initiate it"
                ) from exc
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._stream is not None:
            await self._stream.close()
        if self._client is not None:
            await self._client.close()

    async def next_batch(self, max_records: int, max_wait_s: float, idle_s: float) -> ChangeBatch:
        """Up to max_records events; waits up to idle_s for the first one."""
        assert self._stream is not None, "use `async with ChangeStreamReader(...)`"
        events: list[ChangeEvent] = []
        skipped = 0
        token = self._resume_token
        started = time.monotonic()
        first_at: float | None = None
        while True:
            change = self._pending or await self._stream.try_next()
            self._pending = None
            now = time.monotonic()
            if change is None:
                if events or now - started >= idle_s:
                    if not events:
                        # Idle: the post-batch token still moves past unrelated oplog entries.
                        token = dict(self._stream.resume_token or token or {}) or None
                    break
                continue
            if first_at is None:
                first_at = now
            cluster_time: Timestamp = change["clusterTime"]
            key = (cluster_time.time, cluster_time.inc)
            full = len(events) >= max_records or (now - first_at) >= max_wait_s
            if full and key != self._last_time:
                self._pending = change  # starts the next batch; the transaction is complete
                break
            self._position = self._position + 1 if key == self._last_time else 0
            self._last_time = key
            token = change["_id"]
            event = self._to_event(change, make_seq(key[0], key[1], self._position))
            if event is None:
                skipped += 1
            else:
                events.append(event)
        self._resume_token = token
        return ChangeBatch(events=events, resume_token=token, skipped=skipped)

    def _to_event(self, change: dict[str, Any], seq: str) -> ChangeEvent | None:
        op = _OPS.get(change["operationType"])
        if op is None:
            # DDL (drop, rename, ...) is handled by the capture issue; it is not data.
            return None
        after = change.get("fullDocument")
        if op == "u" and after is None:
            # Deleted before the lookup: its delete event follows and decides the row's fate.
            return None
        document_key = change["documentKey"]
        key, key_type = canonical_key(document_key["_id"])
        wall = change.get("wallTime")
        return ChangeEvent(
            op=op,
            database=change["ns"]["db"],
            collection=change["ns"]["coll"],
            key=key,
            key_type=key_type,
            seq=seq,
            after=after,
            before=change.get("fullDocumentBeforeChange"),
            source_ts_ms=int(wall.timestamp() * 1000)
            if wall
            else change["clusterTime"].time * 1000,
            resume_token=change["_id"],
            lsid=change.get("lsid"),
            txn_number=change.get("txnNumber"),
            document_key=document_key,
        )


def is_transient(exc: BaseException) -> bool:
    """Whether a driver error may go away on retry (network, elections)."""
    return isinstance(exc, PyMongoError) and not isinstance(exc, OperationFailure)
