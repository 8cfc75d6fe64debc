"""Reading a MongoDB change stream in micro-batches (pymongo's async API)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bson import Timestamp
from bson.codec_options import CodecOptions
from pymongo import AsyncMongoClient
from pymongo.asynchronous.change_stream import AsyncChangeStream
from pymongo.errors import OperationFailure, PyMongoError

from lakeward.events import ChangeEvent, canonical_key, make_seq
from lakeward.mongo.errors import (
    CaptureSourceError,
    HistoryLostError,
    change_stream_access,
    is_authentication_failure,
    source_error,
)
from lakeward.mongo.tls import explained_tls_failures

__all__ = [
    "FULL_DOCUMENT_MODES",
    "CaptureSourceError",
    "ChangeBatch",
    "ChangeStreamReader",
    "HistoryLostError",
]

_log = logging.getLogger(__name__)

_OPS = {"insert": "c", "update": "u", "replace": "u", "delete": "d"}
#: Events that are not row changes but must reach the reader (the stream ends after invalidate).
_DDL = ("drop", "rename", "dropDatabase", "invalidate")
#: pymongo's `full_document` values.
FULL_DOCUMENT_MODES = ("updateLookup", "whenAvailable", "required")
#: Changes read ahead of the batch being built (and the size of each server reply): the server
#: prepares the next reply while the capture encodes and publishes the previous one.
READ_AHEAD = 1000
#: Change events decode with naive datetimes (UTC, as BSON stores them): a tz-aware decode costs
#: a Python call per date, and the documents only go on to the envelope's Extended JSON, which
#: takes naive dates as UTC. (`wallTime` is made aware where it is read.)
_NAIVE_UTC: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=False)


@dataclass
class ChangeBatch:
    events: list[ChangeEvent]
    #: Where the next read starts: the last event's token, or the post-batch token when idle.
    resume_token: dict[str, Any] | None
    #: Changes read but not published: DDL (drop, rename, dropDatabase, invalidate) and updates
    #: of documents deleted before their lookup. `counts` says which.
    skipped: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    #: Updates published with the current document because the exact image was missing
    #: (full_document: when_available, oplog_update: diff), by reason.
    fallbacks: dict[str, int] = field(default_factory=dict)


class ChangeStreamReader:
    """Micro-batches of change events from a list of collections of one database.

    A batch closes at `max_records` or `max_wait_s` after its first event, but never inside a
    multi-document transaction (events sharing a cluster time), so a resume never restarts a
    transaction midway and positions within it stay stable.

    `full_document`: `updateLookup` (the current document when the event is read; an update of
    a document deleted since is skipped, its delete follows), `whenAvailable` (the exact
    post-image when MongoDB kept one, else the current document, looked up by the reader),
    `required` (the exact post-image, else CaptureSourceError). `pre_images` adds
    `fullDocumentBeforeChange: whenAvailable` as the events' `before`.
    """

    def __init__(
        self,
        uri: str,
        database: str,
        collections: list[str],
        resume_token: dict[str, Any] | None = None,
        start_at: float | None = None,
        *,
        full_document: str = "updateLookup",
        pre_images: bool = False,
    ) -> None:
        if full_document not in FULL_DOCUMENT_MODES:
            raise ValueError(f"full_document must be one of {FULL_DOCUMENT_MODES}")
        self._uri = uri
        self._database = database
        self._collections = collections
        self._resume_token = resume_token
        self._full_document = full_document
        self._pre_images = pre_images
        # Without a token, start at this wall time (epoch seconds) rather than "now", so changes
        # made after the pipeline was created but before capture started are not missed.
        self._start_at = None if start_at is None else Timestamp(int(start_at), 0)
        self._client: AsyncMongoClient | None = None
        self._stream: AsyncChangeStream | None = None
        # What the read-ahead task found: ("change", change), ("idle", post-batch token) when the
        # server had nothing more, or ("error", exception).
        self._ahead: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(READ_AHEAD)
        self._reading: asyncio.Task[None] | None = None
        self._pending: dict[str, Any] | None = None
        self._last_time: tuple[int, int] | None = None
        self._position = 0
        self._fallbacks: Counter[str] = Counter()

    @property
    def _where(self) -> str:
        return f"change stream {self._database}.{{{','.join(self._collections)}}}"

    async def __aenter__(self) -> ChangeStreamReader:
        self._client = AsyncMongoClient(self._uri, serverSelectionTimeoutMS=10_000, tz_aware=True)
        try:
            with explained_tls_failures(self._uri):
                await self._check_history()
                await self._open(self._resume_token)
        except BaseException:
            await self._client.close()
            raise
        self._reading = asyncio.create_task(self._read_ahead())
        return self

    async def _read_ahead(self) -> None:
        """Fill the read-ahead queue until cancelled or the stream fails."""
        ahead = self._ahead
        try:
            while True:
                assert self._stream is not None
                change = await self._try_next()
                if change is None:
                    # Queued after every change read so far, so the token covers exactly them.
                    await ahead.put(("idle", self._stream.resume_token))
                    continue
                await ahead.put(("change", change))
                if change["operationType"] == "invalidate":
                    # The server ended the stream; a new one starts right after the event.
                    await self._stream.close()
                    await self._open(change["_id"])
        except Exception as exc:
            await ahead.put(("error", exc))

    async def _next_change(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(the next change, None) or (None, the post-batch token) when the server is idle."""
        kind, value = await self._ahead.get()
        if kind == "change":
            return value, None
        if kind == "idle":
            return None, value
        raise value

    async def _open(self, token: dict[str, Any] | None) -> None:
        assert self._client is not None
        # A database watch with a filter: dropDatabase and invalidate have no collection, but the
        # reader must see them (after invalidate the server closes the stream).
        pipeline: list[dict[str, Any]] = [
            {
                "$match": {
                    "$or": [
                        {"ns.coll": {"$in": self._collections}},
                        {"operationType": {"$in": ["dropDatabase", "invalidate"]}},
                    ]
                }
            },
            # The envelope carries whole documents: the update's delta is never read, so the
            # server need not send it nor the reader decode it.
            {"$project": {"updateDescription": 0}},
        ]
        try:
            # startAfter rather than resumeAfter: it also accepts an invalidate event's token.
            database = self._client[self._database].with_options(codec_options=_NAIVE_UTC)
            self._stream = await database.watch(
                pipeline,
                full_document=self._full_document,
                full_document_before_change="whenAvailable" if self._pre_images else None,
                start_after=token,
                start_at_operation_time=None if token else self._start_at,
                max_await_time_ms=50,
                batch_size=READ_AHEAD,
            )
        except OperationFailure as exc:
            access = change_stream_access(self._uri, self._database)
            raise source_error(exc, self._where, self._resume_point(token), access) from exc

    async def _check_history(self) -> None:
        """HistoryLostError when the start point is older than the oldest oplog entry.

        The server checks this itself, but only when the first change passing the filter
        arrives: a quiet collection would let the post-batch token carry the checkpoint past a
        hole in the history unnoticed. Without the serverStatus privilege (clusterMonitor) or on
        mongos, the server's own check is what remains.
        """
        assert self._client is not None
        token = self._resume_token
        start = _token_cluster_time(token) if token is not None else self._start_at
        if start is None:
            return
        try:
            status = await self._client.admin.command(
                {"serverStatus": 1, "oplog": 1, "metrics": 0, "locks": 0, "wiredTiger": 0}
            )
        except OperationFailure as exc:
            if is_authentication_failure(exc):
                # Not a missing privilege: the login itself failed, and the driver would wait
                # out server selection before the next command failed the same way.
                access = change_stream_access(self._uri, self._database)
                raise source_error(exc, self._where, self._resume_point(token), access) from exc
            return
        earliest = (status.get("oplog") or {}).get("earliestOptime")
        if isinstance(earliest, Timestamp) and _is_lost(
            start, earliest, whole_second=token is None
        ):
            raise HistoryLostError(
                self._where,
                self._resume_point(token),
                f"it is at {start!r}, the oldest oplog entry at {earliest!r}",
            )

    def _resume_point(self, token: dict[str, Any] | None) -> Any:
        return token if token is not None else {"start_at_operation_time": self._start_at}

    async def __aexit__(self, *exc_info: object) -> None:
        # The client is closed whatever happens first (a second cancellation, a stream that
        # fails to close): an unclosed client leaks its connections and monitor tasks.
        try:
            if self._reading is not None:
                self._reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._reading
            if self._stream is not None:
                await self._stream.close()
        finally:
            if self._client is not None:
                await self._client.close()

    async def _try_next(self) -> dict[str, Any] | None:
        assert self._stream is not None, "use `async with ChangeStreamReader(...)`"
        try:
            return await self._stream.try_next()
        except OperationFailure as exc:
            access = change_stream_access(self._uri, self._database)
            resume_point = self._resume_point(self._resume_token)
            raise source_error(exc, self._where, resume_point, access) from exc

    async def next_batch(self, max_records: int, max_wait_s: float, idle_s: float) -> ChangeBatch:
        """Up to max_records events; waits up to idle_s for the first one."""
        assert self._reading is not None, "use `async with ChangeStreamReader(...)`"
        events: list[ChangeEvent] = []
        skipped: Counter[str] = Counter()
        self._fallbacks = Counter()
        token = self._resume_token
        started = time.monotonic()
        first_at: float | None = None
        while True:
            change: dict[str, Any] | None
            idle_token: dict[str, Any] | None = None
            if self._pending is not None:
                change, self._pending = self._pending, None
            else:
                change, idle_token = await self._next_change()
            now = time.monotonic()
            if change is None:
                if events or now - started >= idle_s:
                    if not events:
                        # Idle: the post-batch token still moves past unrelated oplog entries.
                        token = dict(idle_token or token or {}) or None
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
            kind = change["operationType"]
            if kind in _DDL:
                # (After an invalidate the read-ahead task has opened a new stream already.)
                self._note_ddl(change)
                skipped[kind] += 1
                continue
            event = await self._to_event(change, make_seq(key[0], key[1], self._position), token)
            if event is None:
                skipped["update_of_deleted_document"] += 1
            else:
                events.append(event)
        self._resume_token = token
        return ChangeBatch(
            events=events,
            resume_token=token,
            skipped=sum(skipped.values()),
            counts=dict(skipped),
            fallbacks=dict(self._fallbacks),
        )

    def _note_ddl(self, change: dict[str, Any]) -> None:
        ns = change.get("ns") or {}
        target = ".".join(p for p in (ns.get("db"), ns.get("coll")) if p) or self._database
        if change["operationType"] == "rename":
            to = change.get("to") or {}
            target += f" -> {to.get('db')}.{to.get('coll')}"
        _log.warning(
            "capture skipped %s of %s at %s: rows already in the lake stay; "
            "capture goes on for the listed collections",
            change["operationType"],
            target,
            change["clusterTime"],
        )

    async def _to_event(
        self, change: dict[str, Any], seq: str, token: dict[str, Any]
    ) -> ChangeEvent | None:
        op = _OPS[change["operationType"]]
        after = change.get("fullDocument")
        document_key = change["documentKey"]
        ns = change["ns"]
        if op == "u" and after is None and self._full_document == "whenAvailable":
            # No post-image kept (pre-images off, or expired): fall back to the current document.
            self._fallbacks["post_image_missing"] += 1
            assert self._client is not None
            after = await self._client[self._database][ns["coll"]].find_one(
                {"_id": document_key["_id"]}
            )
        if op == "u" and after is None:
            # Deleted before the lookup: its delete event follows and decides the row's fate.
            return None
        key, key_type = canonical_key(document_key["_id"])
        wall = change.get("wallTime")
        return ChangeEvent(
            op=op,
            database=ns["db"],
            collection=ns["coll"],
            key=key,
            key_type=key_type,
            seq=seq,
            after=after,
            before=change.get("fullDocumentBeforeChange"),
            source_ts_ms=int(wall.replace(tzinfo=dt.UTC).timestamp() * 1000)
            if wall
            else change["clusterTime"].time * 1000,
            resume_token=token,
            lsid=change.get("lsid"),
            txn_number=change.get("txnNumber"),
            document_key=document_key,
        )


def _token_cluster_time(token: dict[str, Any]) -> Timestamp | None:
    """The cluster time a resume token starts with (its KeyString: 0x82, seconds, increment)."""
    data = token.get("_data")
    if not isinstance(data, str) or len(data) < 18 or not data.startswith("82"):
        return None
    try:
        return Timestamp(int(data[2:10], 16), int(data[10:18], 16))
    except ValueError:
        return None


def is_transient(exc: BaseException) -> bool:
    """Whether a driver error may go away on retry (network, elections)."""
    return isinstance(exc, PyMongoError) and not isinstance(exc, OperationFailure)


def _is_lost(start: Timestamp, earliest: Timestamp, whole_second: bool) -> bool:
    """Whether changes after `start` may be gone, given the oldest oplog entry.

    A pipeline's creation time is known to the second only (`Timestamp(t, 0)`), so a start
    point in the oldest entry's own second is not a loss: on a replica set just initiated, the
    first entry is `(t, 1)` and a pipeline created in that second has missed nothing.
    """
    if whole_second:
        return earliest.time > start.time
    return earliest > start
