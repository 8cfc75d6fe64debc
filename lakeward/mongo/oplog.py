"""Tailing the replica set's oplog (`local.oplog.rs`) in micro-batches: the `oplog` strategy.

The reader yields the same `ChangeBatch` as `ChangeStreamReader`, and its events equal the change
stream's for the same change (op, key, `seq`, `after`, `before`, `lsid`/`txnNumber`, `ts_ms`), so
a pipeline may switch strategies without the lake noticing. Decoding rules:

- `op: i` -> `c` (after = `o`); `op: d` -> `d` (document key = `o`); `op: u` whose `o` has no
  `$`-fields -> `u` with after = `o` (a replacement); any other `op: u` (the `$v: 2` diff) -> `u`
  with after = the current document (`oplog_update: lookup`, like change streams'
  `updateLookup`; a document already gone is skipped, its delete follows) or the pre-image with
  the diff applied (`oplog_update: diff`, the exact post-image, like `fullDocument: required`;
  it needs the pre-image MongoDB keeps when `changeStreamPreAndPostImages` is on, and looks the
  document up when there is none).
- Transactions (`op: c` on `admin.$cmd` with `o.applyOps`): every inner op on a listed
  collection, in order; a transaction too large for one entry is split into `partialTxn`
  entries linked by `prevOpTime`, and only its last (commit) entry counts: the chain is read
  back from there. Cluster time = the commit entry's `ts`, position = the index among the
  transaction's ops on the listed collections: exactly what change streams report. Only
  transactions carry `lsid`/`txnNumber` (change streams leave them out for retryable writes).
- DDL on a listed collection (drop, rename) and dropDatabase are skipped, logged and counted.

The checkpoint is the `ts` of the last entry read (`{"ts": Timestamp}`). An idle reader still
moves it forward to the majority commit point once it has checked that no entry it wants lies
before that point, so a quiet pipeline's checkpoint keeps up with a busy oplog.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bson import Int64, Timestamp
from pymongo import AsyncMongoClient, CursorType
from pymongo.asynchronous.cursor import AsyncCursor
from pymongo.errors import OperationFailure

from lakeward.events import ChangeEvent, canonical_key, make_seq
from lakeward.mongo.change_stream import ChangeBatch
from lakeward.mongo.diff import DiffError, apply_update_diff, is_replacement
from lakeward.mongo.errors import (
    CaptureSourceError,
    HistoryLostError,
    SourceAccess,
    oplog_access,
    source_error,
)
from lakeward.mongo.tls import explained_tls_failures

__all__ = ["OplogReader"]

_log = logging.getLogger(__name__)

_NULL_TS = Timestamp(0, 0)
#: The largest increment a lower bound uses. mongod turns a `ts` bound into the position where its
#: oplog scan starts only for increments below 2**31 (else it scans the whole oplog: seconds per
#: million entries); no second holds 2**31 operations, so the bound misses nothing.
_MAX_INC = 2**31 - 1
#: How often an idle reader tries to move its checkpoint to the majority commit point.
_IDLE_PROGRESS_INTERVAL_S = 5.0


@dataclass
class _Op:
    """One inner operation of an oplog entry, with what the event needs from its entry."""

    op: dict[str, Any]
    entry_ts: Timestamp  # the entry holding the op: the pre-image's key
    index: int  # the op's index in that entry's applyOps (0 for a plain entry)
    commit_ts: Timestamp  # the change's cluster time
    position: int  # among the ops of the same commit on the listed collections
    wall_ms: int
    lsid: dict[str, Any] | None = None
    txn_number: int | None = None


@dataclass
class _Pending:
    ops: list[_Op] = field(default_factory=list)
    skipped: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    fallbacks: Counter[str] = field(default_factory=Counter)


class OplogReader:
    """Micro-batches of change events from a list of collections of one database, read from the
    oplog with a tailable await cursor. Same contract as `ChangeStreamReader`."""

    def __init__(
        self,
        uri: str,
        database: str,
        collections: list[str],
        resume_token: dict[str, Any] | None = None,
        start_at: float | None = None,
        *,
        update_mode: str = "lookup",
        pre_images: bool = False,
        max_await_ms: int = 50,
    ) -> None:
        if update_mode not in ("lookup", "diff"):
            raise ValueError(f"update_mode must be 'lookup' or 'diff', not {update_mode!r}")
        self._uri = uri
        self._database = database
        self._collections = list(collections)
        self._namespaces = [f"{database}.{c}" for c in collections]
        self._resume_token = resume_token
        self._start_at = start_at
        self._update_mode = update_mode
        self._pre_images = pre_images
        self._max_await_ms = max_await_ms
        self._client: AsyncMongoClient[dict[str, Any]] | None = None
        self._cursor: AsyncCursor[dict[str, Any]] | None = None
        #: Every entry up to and including this one has been read (exclusive lower bound).
        self._last_ts: Timestamp = _NULL_TS
        self._last_idle_check = 0.0

    @property
    def _where(self) -> str:
        return f"oplog {self._database}.{{{','.join(self._collections)}}}"

    async def __aenter__(self) -> OplogReader:
        self._client = AsyncMongoClient(self._uri, serverSelectionTimeoutMS=10_000, tz_aware=True)
        try:
            with explained_tls_failures(self._uri):
                hello = await self._client.admin.command("hello")
            if not hello.get("setName"):
                raise CaptureSourceError(
                    f"{self._where}: oplog tailing needs a replica set (this mongod is "
                    "standalone and keeps no oplog); start mongod with --replSet and initiate it"
                )
            self._last_ts = await self._start_bound()
            await self._check_history()
            await self._open_cursor()
        except OperationFailure as exc:
            await self._client.close()
            raise source_error(exc, self._where, self._resume_point(), self._access) from exc
        except BaseException:
            await self._client.close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._cursor is not None:
            await self._cursor.close()
        if self._client is not None:
            await self._client.close()

    # -- position -------------------------------------------------------------------------

    @property
    def _oplog(self) -> Any:
        assert self._client is not None, "use `async with OplogReader(...)`"
        return self._client.local["oplog.rs"]

    @property
    def _access(self) -> SourceAccess:
        """Who reads and what the strategy needs, for permission errors."""
        pre_images = self._pre_images or self._update_mode == "diff"
        return oplog_access(self._uri, self._database, pre_images=pre_images)

    def _resume_point(self) -> Any:
        if self._resume_token is not None:
            return self._resume_token
        return {"start_at": self._start_at}

    async def _start_bound(self) -> Timestamp:
        """The exclusive lower bound: the checkpoint, else just before start_at, else now."""
        if self._resume_token is not None:
            ts = self._resume_token.get("ts")
            if not isinstance(ts, Timestamp):
                raise CaptureSourceError(
                    f"{self._where}: the checkpoint {self._resume_token!r} is not an oplog "
                    "position ({'ts': Timestamp}); was the pipeline's strategy changed?"
                )
            return ts
        if self._start_at is not None:
            # ts > (start_at - 1 s, max increment)  <=>  ts >= (start_at, 0), as change streams'
            # startAtOperationTime.
            return Timestamp(int(self._start_at) - 1, _MAX_INC)
        newest = await self._oplog.find({}, {"ts": 1}).sort("$natural", -1).limit(1).to_list()
        return newest[0]["ts"] if newest else _NULL_TS

    async def _check_history(self) -> None:
        """HistoryLostError when entries after the start bound may have been truncated away."""
        oldest = await self._oplog.find({}, {"ts": 1}).sort("$natural", 1).limit(1).to_list()
        if self._resume_token is None and self._start_at is not None:
            # A creation time is known to the second: the oldest entry's own second is no loss.
            lost = bool(oldest) and oldest[0]["ts"].time > int(self._start_at)
        else:
            lost = bool(oldest) and oldest[0]["ts"] > self._last_ts
        if lost:
            raise HistoryLostError(
                self._where,
                self._resume_point(),
                f"oldest oplog entry is {oldest[0]['ts']!r}, the reader needs everything after "
                f"{self._last_ts!r}",
            )

    def _filter(self, after: Timestamp, until: Timestamp | None = None) -> dict[str, Any]:
        ts: dict[str, Any] = {"$gt": after}
        if until is not None:
            ts["$lte"] = until
        return {
            "ts": ts,
            "$or": [
                {"ns": {"$in": self._namespaces}},
                # DDL of the database: drop, rename, dropDatabase.
                {"ns": f"{self._database}.$cmd", "op": "c"},
                # Committed transactions (and batched writes). Parts of a split transaction and
                # prepared ones are read back from their commit entry.
                {
                    "ns": "admin.$cmd",
                    "op": "c",
                    "o.partialTxn": {"$exists": False},
                    "o.prepare": {"$exists": False},
                    "$or": [
                        {"o.applyOps.ns": {"$in": self._namespaces}},
                        {"prevOpTime.ts": {"$gt": _NULL_TS}},
                    ],
                },
            ],
        }

    async def _open_cursor(self) -> None:
        if self._cursor is not None:
            await self._cursor.close()
        self._cursor = self._oplog.find(
            self._filter(self._last_ts),
            cursor_type=CursorType.TAILABLE_AWAIT,
        ).max_await_time_ms(self._max_await_ms)

    async def _next_entry(self) -> dict[str, Any] | None:
        """The next wanted entry, or None after one empty wait."""
        assert self._cursor is not None
        if not self._cursor.alive:
            # The server ended the cursor (killed, or its position lost): reopen after the last
            # entry read, unhurried, and check the history is still there.
            await asyncio.sleep(0.1)
            await self._check_history()
            await self._open_cursor()
        try:
            return await self._cursor.next()
        except StopAsyncIteration:
            return None
        except OperationFailure as exc:
            raise source_error(exc, self._where, {"ts": self._last_ts}, self._access) from exc

    # -- batches --------------------------------------------------------------------------

    async def next_batch(self, max_records: int, max_wait_s: float, idle_s: float) -> ChangeBatch:
        """Up to about max_records events (a transaction is never split); waits up to idle_s
        for the first one."""
        pending = _Pending()
        started = time.monotonic()
        first_at: float | None = None
        read_any = False
        while True:
            now = time.monotonic()
            if len(pending.ops) >= max_records or (
                first_at is not None and now - first_at >= max_wait_s
            ):
                break
            entry = await self._next_entry()
            now = time.monotonic()
            if entry is None:
                if pending.ops or now - started >= idle_s:
                    break
                continue
            read_any = True
            await self._decode_entry(entry, pending)
            self._last_ts = entry["ts"]
            if pending.ops and first_at is None:
                first_at = now
        try:
            events = await self._to_events(pending)
            if not read_any:
                await self._advance_when_idle()
        except OperationFailure as exc:
            # Look-ups read the captured database, pre-images config.system.preimages: a user
            # allowed only the oplog fails here, at the first update.
            raise source_error(exc, self._where, {"ts": self._last_ts}, self._access) from exc
        return ChangeBatch(
            events=events,
            resume_token={"ts": self._last_ts},
            skipped=pending.skipped,
            counts=dict(pending.counts),
            fallbacks=dict(pending.fallbacks),
        )

    async def _advance_when_idle(self) -> None:
        """Move past entries of other collections up to the majority commit point.

        Entries at or before the majority commit point have no holes before them, so a plain
        range query sees all of them; when none is wanted, the checkpoint may skip the range.
        """
        now = time.monotonic()
        if now - self._last_idle_check < _IDLE_PROGRESS_INTERVAL_S:
            return
        self._last_idle_check = now
        assert self._client is not None
        hello = await self._client.admin.command("hello")
        majority = hello.get("lastWrite", {}).get("majorityOpTime", {}).get("ts")
        if not isinstance(majority, Timestamp) or majority <= self._last_ts:
            return
        wanted = (
            await self._oplog.find(self._filter(self._last_ts, majority), {"ts": 1})
            .limit(1)
            .to_list()
        )
        if not wanted:
            self._last_ts = majority

    async def _decode_entry(self, entry: dict[str, Any], pending: _Pending) -> None:
        op, ns = entry.get("op"), entry.get("ns")
        if ns in self._namespaces and op in ("i", "u", "d"):
            pending.ops.append(self._op(entry, entry, 0, 0))
            return
        if op != "c":
            return
        o = entry.get("o", {})
        if ns == f"{self._database}.$cmd":
            self._note_ddl(entry, o, pending)
        elif ns == "admin.$cmd" and ("applyOps" in o or "commitTransaction" in o):
            await self._decode_transaction(entry, pending)

    def _note_ddl(self, entry: dict[str, Any], o: dict[str, Any], pending: _Pending) -> None:
        kind: str | None = None
        if o.get("drop") in self._collections:
            kind, target = "drop", f"{self._database}.{o['drop']}"
        elif o.get("renameCollection") in self._namespaces:
            kind, target = "rename", f"{o['renameCollection']} -> {o.get('to')}"
        elif "dropDatabase" in o:
            kind, target = "dropDatabase", self._database
        if kind is None:
            return  # create, indexes, other collections: not changes of replicated rows
        pending.skipped += 1
        pending.counts[kind] += 1
        _log.warning(
            "capture skipped %s of %s at %s: rows already in the lake stay; "
            "capture goes on for the listed collections",
            kind,
            target,
            entry["ts"],
        )

    async def _decode_transaction(self, commit: dict[str, Any], pending: _Pending) -> None:
        chain = await self._transaction_chain(commit)
        position = 0
        wall_ms = _wall_ms(commit)
        for part in chain:
            for index, inner in enumerate(part.get("o", {}).get("applyOps", [])):
                if inner.get("ns") not in self._namespaces or inner.get("op") not in (
                    "i",
                    "u",
                    "d",
                ):
                    continue
                op = self._op(inner, part, index, position, commit_ts=commit["ts"])
                op.wall_ms = wall_ms
                # Batched writes (applyOps without a session) carry no transaction identity.
                op.lsid = commit.get("lsid")
                op.txn_number = commit.get("txnNumber")
                pending.ops.append(op)
                position += 1

    async def _transaction_chain(self, commit: dict[str, Any]) -> list[dict[str, Any]]:
        """The entries of a transaction in order, read back from its commit entry."""
        chain = [commit] if "applyOps" in commit.get("o", {}) else []
        previous = commit.get("prevOpTime", {}).get("ts", _NULL_TS)
        while previous != _NULL_TS:
            found = await self._oplog.find({"ts": previous}).limit(1).to_list()
            if not found:
                raise HistoryLostError(
                    self._where,
                    {"ts": self._last_ts},
                    f"part {previous!r} of the transaction committed at {commit['ts']!r} is gone",
                )
            part = found[0]
            if "applyOps" in part.get("o", {}):
                chain.append(part)
            previous = part.get("prevOpTime", {}).get("ts", _NULL_TS)
        chain.reverse()
        return chain

    def _op(
        self,
        op: dict[str, Any],
        entry: dict[str, Any],
        index: int,
        position: int,
        commit_ts: Timestamp | None = None,
    ) -> _Op:
        return _Op(
            op=op,
            entry_ts=entry["ts"],
            index=index,
            commit_ts=commit_ts or entry["ts"],
            position=position,
            wall_ms=_wall_ms(entry),
        )

    # -- images ---------------------------------------------------------------------------

    async def _to_events(self, pending: _Pending) -> list[ChangeEvent]:
        lookups = [op for op in pending.ops if self._needs_lookup(op)]
        pre_images = await self._read_pre_images(
            [op for op in pending.ops if self._needs_pre_image(op)]
        )
        events: list[ChangeEvent] = []
        fallbacks: list[_Op] = []
        afters: dict[int, dict[str, Any] | None] = {}
        for i, op in enumerate(pending.ops):
            if (
                op.op["op"] == "u"
                and self._update_mode == "diff"
                and not is_replacement(op.op["o"])
            ):
                pre = pre_images.get(_pre_image_key(op))
                try:
                    afters[i] = apply_update_diff(pre, op.op["o"]) if pre is not None else None
                except DiffError:
                    afters[i] = None
                if afters[i] is None:
                    fallbacks.append(op)
        if fallbacks:
            pending.fallbacks["pre_image_missing"] += len(fallbacks)
        current = await self._read_current([*lookups, *fallbacks])
        for i, op in enumerate(pending.ops):
            kind = op.op["op"]
            o = op.op.get("o", {})
            if kind == "i":
                after: dict[str, Any] | None = o
                document_key = op.op.get("o2") or {"_id": o["_id"]}
            elif kind == "d":
                after, document_key = None, o
            else:
                document_key = op.op.get("o2") or {"_id": o.get("_id")}
                if is_replacement(o):
                    after = o
                elif afters.get(i) is not None:
                    after = afters[i]
                else:
                    after = current.get(_doc_ref(op, document_key["_id"]))
                    if after is None:
                        # Deleted before the lookup: its delete follows and decides the row.
                        pending.skipped += 1
                        pending.counts["update_of_deleted_document"] += 1
                        continue
            before = pre_images.get(_pre_image_key(op)) if self._pre_images else None
            key, key_type = canonical_key(document_key["_id"])
            events.append(
                ChangeEvent(
                    op={"i": "c", "u": "u", "d": "d"}[kind],
                    database=self._database,
                    collection=op.op["ns"].split(".", 1)[1],
                    key=key,
                    key_type=key_type,
                    seq=make_seq(op.commit_ts.time, op.commit_ts.inc, op.position),
                    after=after,
                    before=before if kind != "i" else None,
                    source_ts_ms=op.wall_ms,
                    resume_token={"ts": op.commit_ts},
                    lsid=op.lsid,
                    txn_number=op.txn_number,
                    document_key=document_key,
                )
            )
        return events

    def _needs_lookup(self, op: _Op) -> bool:
        return (
            op.op["op"] == "u"
            and self._update_mode == "lookup"
            and not is_replacement(op.op.get("o", {}))
        )

    def _needs_pre_image(self, op: _Op) -> bool:
        kind = op.op["op"]
        if kind == "d":
            return self._pre_images
        if kind == "u":
            diff = self._update_mode == "diff" and not is_replacement(op.op.get("o", {}))
            return self._pre_images or diff
        return False

    async def _read_current(self, ops: list[_Op]) -> dict[tuple[str, str, str], dict[str, Any]]:
        """Current documents by (collection, canonical key), one query per collection."""
        by_collection: dict[str, list[Any]] = {}
        for op in ops:
            document_key = op.op.get("o2") or {"_id": op.op.get("o", {}).get("_id")}
            by_collection.setdefault(op.op["ns"].split(".", 1)[1], []).append(document_key["_id"])
        assert self._client is not None
        found: dict[tuple[str, str, str], dict[str, Any]] = {}
        for collection, ids in by_collection.items():
            cursor = self._client[self._database][collection].find({"_id": {"$in": ids}})
            async for doc in cursor:
                found[(collection, *canonical_key(doc["_id"]))] = doc
        return found

    async def _read_pre_images(self, ops: list[_Op]) -> dict[tuple[Any, ...], dict[str, Any]]:
        """Pre-images MongoDB stored for these ops (config.system.preimages), by op."""
        keys = [op for op in ops if op.op.get("ui") is not None]
        if not keys:
            return {}
        assert self._client is not None
        ids = [
            {"nsUUID": op.op["ui"], "ts": op.entry_ts, "applyOpsIndex": Int64(op.index)}
            for op in keys
        ]
        found: dict[tuple[Any, ...], dict[str, Any]] = {}
        cursor = self._client.config["system.preimages"].find({"_id": {"$in": ids}})
        async for doc in cursor:
            _id = doc["_id"]
            found[(_id["nsUUID"], _id["ts"], int(_id["applyOpsIndex"]))] = doc["preImage"]
        return found


def _pre_image_key(op: _Op) -> tuple[Any, ...]:
    return (op.op.get("ui"), op.entry_ts, op.index)


def _doc_ref(op: _Op, _id: Any) -> tuple[str, str, str]:
    return (op.op["ns"].split(".", 1)[1], *canonical_key(_id))


def _wall_ms(entry: dict[str, Any]) -> int:
    wall = entry.get("wall")
    if wall is not None:
        return int(wall.timestamp() * 1000)
    ts: Timestamp = entry["ts"]
    return ts.time * 1000
