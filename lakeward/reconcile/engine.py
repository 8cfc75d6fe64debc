"""A collection's reconciliation, step by step, for the activities to call (I/O lives here).

1. `plan`: pin the table's current version; cut the source's `_id` order into leaves of about
   `leaf_size` documents (split points from a server-side sample, like the snapshot's ranges).
2. `hash_source` / `hash_lake`: per range of leaves, each side's leaf hashes (count and
   xxh3-128 over `(key, document hash)` in key order). Ranges run in parallel, a crashed one
   resumes at its first unfinished leaf (`done` holds the finished leaves' hashes).
3. The caller compares the trees from the root and asks `candidates` for the keys under the
   mismatching leaves only.
4. `verify`: the candidates again, one by one, after the pipeline has applied past the source
   time at which they were read; only what persists is a difference.
5. `repair`: re-emit the source state of exactly those keys into the collection's topic (`r`
   events with a fresh seq, `d` for keys the source does not have), for apply to merge.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa
from bson import Timestamp, json_util

from lakeward.apply import app_id
from lakeward.capture import checkpoint_topic
from lakeward.delta.table import CURRENT_STATE_SCHEMA, TxnTable
from lakeward.events import ChangeEvent, canonical_key, encode_envelope, make_seq
from lakeward.kafka.admin import ensure_compacted_topic, ensure_topic
from lakeward.kafka.consumer import KafkaReadError, PartitionReader, read_last_value
from lakeward.kafka.producer import OutgoingRecord, TransactionalPublisher
from lakeward.kafka.security import KafkaTarget
from lakeward.mongo.reconcile import SourceReader
from lakeward.reconcile.compare import (
    CHANGED,
    MISSING,
    Difference,
    Key,
    classify,
    key_order,
    leaf_hashes,
)
from lakeward.reconcile.hashing import LeafHash, document_hash, leaf_hash
from lakeward.reconcile.keys import id_value, lookup_values, order_key
from lakeward.reconcile.lake import latest_version, open_lake
from lakeward.reconcile.normal import lake_documents, one_by_one, source_documents
from lakeward.rowhash import raw_batch_hashes
from lakeward.snapshot import decode_bound, encode_bound
from workflows.spec import CaptureStrategy, PipelineSpec, ReconcileMode

__all__ = ["Candidates", "CollectionReconciler", "Plan", "Verified"]

#: Position of re-emitted rows within their cluster time: after any change sharing that time.
_REPAIR_POSITION = 0xFFFFFFFF
#: Rounds of verification for keys that keep changing while they are compared.
_VERIFY_ROUNDS = 3


@dataclass
class Plan:
    version: int | None  # None: no table yet
    #: Interior leaf boundaries, ascending, as Extended JSON (leaf i is [b_i-1, b_i)).
    bounds: list[str]
    #: What the lake side will hash from: "fast" only when the table has a `_hash` column.
    mode: str
    estimated_documents: int = 0


@dataclass
class Candidates:
    """Keys under mismatching leaves that differ in the pinned comparison."""

    keys: list[Key] = field(default_factory=list)
    documents: int = 0


@dataclass
class Verified:
    differences: list[Difference] = field(default_factory=list)
    #: Keys that changed again in every round (in flight): not reported as differences.
    unsettled: list[Key] = field(default_factory=list)
    #: Whether the pipeline was seen to apply past the read time (False: it did not within the
    #: timeout, so the differences are relative to a lake that may be behind).
    settled: bool = True


class CollectionReconciler:
    """Reconciliation steps for one collection of one pipeline."""

    def __init__(
        self,
        spec: PipelineSpec,
        collection: str,
        mongo_uri: str,
        bootstrap: KafkaTarget,
        topic_prefix: str,
        storage_options: Mapping[str, str],
        settle_timeout_s: float = 120.0,
    ) -> None:
        self.spec = spec
        self.collection = collection
        self.uri = spec.sink.table_uri(spec.source.database, collection)
        self.topic = spec.topic(topic_prefix, collection)
        self._mongo_uri = mongo_uri
        self._bootstrap = bootstrap
        self._prefix = topic_prefix
        self._options = dict(storage_options)
        self.settle_timeout_s = settle_timeout_s

    def _source(self) -> SourceReader:
        return SourceReader(self._mongo_uri, self.spec.source.database, self.collection)

    # -- 1. plan ---------------------------------------------------------------------------

    async def plan(self, leaf_size: int, mode: str) -> Plan:
        version = await asyncio.to_thread(latest_version, self.uri, self._options)
        async with self._source() as reader:
            points = await reader.split_points(leaf_size)
            estimate = await reader.estimated_count()
        effective = ReconcileMode.deep.value
        if mode == ReconcileMode.fast and await asyncio.to_thread(self._fast_possible, version):
            effective = ReconcileMode.fast.value
        return Plan(version, [encode_bound(p) for p in points], effective, estimate)

    def _fast_possible(self, version: int | None) -> bool:
        """`fast` compares the source's raw BSON hashes with the rows' `_hash`: it needs a
        table whose every live row has one (rows applied before Lakeward wrote it have none,
        and would all be candidates), and Lakeward's own capture (Debezium's legacy JSON does
        not re-encode to MongoDB's bytes)."""
        if self.spec.source.capture is CaptureStrategy.debezium:
            return False
        if version is None:
            return True
        lake = open_lake(self.uri, self._options, version)
        try:
            return lake.has_hash_column and lake.live_rows_without_hash() == 0
        finally:
            lake.close()

    # -- 2. hash each side -------------------------------------------------------------------

    async def hash_source(
        self,
        version: int | None,
        lower: str | None,
        leaf_bounds: Sequence[str | None],
        done: Sequence[LeafHash] = (),
        on_leaf: Callable[[list[LeafHash]], None] = lambda hashes: None,
        mode: str = ReconcileMode.deep.value,
    ) -> list[LeafHash]:
        """Leaf hashes of the source between `lower` and the leaves' upper bounds
        (`leaf_bounds[i]` is leaf i's upper bound, None for the last leaf of the collection),
        resuming after the leaves in `done`."""
        fast = mode == ReconcileMode.fast
        schema = None if fast else await asyncio.to_thread(self._schema, version)
        hashes = list(done)
        async with self._source() as reader:
            uppers = list(leaf_bounds)
            lowers = [lower, *uppers[:-1]]
            for low, high in list(zip(lowers, uppers, strict=True))[len(done) :]:
                if fast:
                    # In the index's order, which is the key order: no sort, no decode.
                    pairs = []
                    async for raw in reader.raw_batches(decode_bound(low), decode_bound(high)):
                        pairs.extend(raw_batch_hashes(raw))
                    hashes.append(LeafHash(len(pairs), leaf_hash(pairs)))
                else:
                    entries: list[tuple[Key, Any, bytes]] = []
                    async for docs in reader.documents(decode_bound(low), decode_bound(high)):
                        normal = await asyncio.to_thread(
                            source_documents, docs, schema, self.spec.schema_policy
                        )
                        entries.extend(_entries(docs, normal))
                    hashes.append(leaf_hashes(entries, [])[0])
                on_leaf(hashes)
        return hashes

    def hash_lake(
        self, version: int | None, lower: str | None, leaf_bounds: Sequence[str | None], mode: str
    ) -> list[LeafHash]:
        """Leaf hashes of the lake at `version` over the same leaves (sync: DuckDB and Arrow)."""
        uppers = [decode_bound(b) for b in leaf_bounds]
        if version is None:
            return [LeafHash() for _ in uppers]
        interior = [order_key(b) for b in uppers[:-1]]
        lake = open_lake(self.uri, self._options, version)
        try:
            fast = mode == ReconcileMode.fast and lake.has_hash_column
            columns = ["_id", "_id_type", "_hash"] if fast else None
            entries: list[tuple[Key, Any, bytes]] = []
            for rows, orders in lake.rows(decode_bound(lower), uppers[-1], columns):
                keys = list(
                    zip(
                        rows.column("_id").to_pylist(),
                        rows.column("_id_type").to_pylist(),
                        strict=True,
                    )
                )
                if fast:
                    digests = [d or b"" for d in rows.column("_hash").to_pylist()]
                else:
                    digests = [
                        document_hash(d) if d is not None else b"" for d in lake_documents(rows)
                    ]
                entries.extend(zip(keys, orders, digests, strict=True))
        finally:
            lake.close()
        return leaf_hashes(entries, interior)

    def _schema(self, version: int | None) -> pa.Schema | None:
        if version is None:
            return None
        lake = open_lake(self.uri, self._options, version)
        try:
            return lake.schema
        finally:
            lake.close()

    # -- 3. keys under mismatching leaves ----------------------------------------------------

    async def candidates(
        self,
        version: int | None,
        leaves: Sequence[tuple[str | None, str | None]],
        mode: str = ReconcileMode.deep.value,
    ) -> Candidates:
        """The keys that differ under the given leaves ([lower, upper) bounds), the two sides
        compared key by key at the pinned version."""
        if mode == ReconcileMode.fast:
            return await self._fast_candidates(version, leaves)
        schema = await asyncio.to_thread(self._schema, version)
        lake: dict[Key, bytes] = {}
        if version is not None:
            lake = await asyncio.to_thread(self._lake_digests, version, leaves)
        source: dict[Key, bytes] = {}
        documents = 0
        policy = self.spec.schema_policy
        async with self._source() as reader:
            for low, high in _contiguous(leaves):
                async for docs in reader.documents(decode_bound(low), decode_bound(high)):
                    documents += len(docs)
                    entries = _entries(
                        docs, await asyncio.to_thread(source_documents, docs, schema, policy)
                    )
                    # Planned as a batch, a value needing a widening widens its batch-mates:
                    # a document that differs is planned again alone before it counts.
                    again = [i for i, (k, _, d) in enumerate(entries) if lake.get(k) != d]
                    alone = await asyncio.to_thread(
                        one_by_one, [docs[i] for i in again], schema, policy
                    )
                    for i, entry in zip(
                        again, _entries([docs[i] for i in again], alone), strict=True
                    ):
                        entries[i] = entry
                    source.update((k, d) for k, _, d in entries)
        differing = {k for k in source.keys() | lake.keys() if source.get(k) != lake.get(k)}
        return Candidates(sorted(differing, key=key_order), documents)

    async def _fast_candidates(
        self, version: int | None, leaves: Sequence[tuple[str | None, str | None]]
    ) -> Candidates:
        """`candidates` by raw BSON hash against `_hash`: verification compares them in full."""
        lake: dict[Key, bytes] = {}
        if version is not None:
            lake = await asyncio.to_thread(self._lake_digests, version, leaves, True)
        source: dict[Key, bytes] = {}
        async with self._source() as reader:
            for low, high in _contiguous(leaves):
                async for raw in reader.raw_batches(decode_bound(low), decode_bound(high)):
                    source.update(raw_batch_hashes(raw))
        differing = {k for k in source.keys() | lake.keys() if source.get(k) != lake.get(k)}
        return Candidates(sorted(differing, key=key_order), len(source))

    def _lake_digests(
        self, version: int, leaves: Sequence[tuple[str | None, str | None]], fast: bool = False
    ) -> dict[Key, bytes]:
        lake = open_lake(self.uri, self._options, version)
        out: dict[Key, bytes] = {}
        try:
            columns = ["_id", "_id_type", "_hash"] if fast else None
            for low, high in _contiguous(leaves):
                for rows, _ in lake.rows(decode_bound(low), decode_bound(high), columns):
                    keys = zip(
                        rows.column("_id").to_pylist(),
                        rows.column("_id_type").to_pylist(),
                        strict=True,
                    )
                    if fast:
                        out.update(zip(keys, rows.column("_hash").to_pylist(), strict=True))
                        continue
                    for key, doc in zip(keys, lake_documents(rows), strict=True):
                        if doc is not None:
                            out[key] = document_hash(doc)
        finally:
            lake.close()
        return out

    # -- 4. verify after the pipeline has applied past the read ------------------------------

    async def verify(self, keys: Sequence[Key]) -> Verified:
        """The differences among `keys` that persist once the lake has applied past the source
        time they were read at; keys changing in every round are `unsettled`."""
        result = Verified()
        todo = list(keys)
        for _ in range(_VERIFY_ROUNDS):
            if not todo:
                break
            async with self._source() as reader:
                read_from = await reader.majority_time()
                found = await reader.documents_by_ids([v for k in todo for v in lookup_values(*k)])
                read_to = await reader.majority_time()
            result.settled = await self.wait_applied_past(read_to) and result.settled
            version = await asyncio.to_thread(latest_version, self.uri, self._options)
            schema = await asyncio.to_thread(self._schema, version)
            source = dict(
                zip(
                    [canonical_key(d["_id"]) for d in found],
                    await asyncio.to_thread(one_by_one, found, schema, self.spec.schema_policy),
                    strict=True,
                )
            )
            lake, seqs = await asyncio.to_thread(self._lake_documents, version, todo)
            # A row whose change is at or before the read's start is reflected in the read (or
            # superseded by a newer row, the lake having applied past the read's end).
            horizon = make_seq(read_from.time, read_from.inc, _REPAIR_POSITION)
            moving = [k for k in todo if seqs.get(k, "") > horizon]
            steady = set(todo) - set(moving)
            # A source document apply cannot write (it dead-letters it) has no normal form:
            # missing where the lake has no row, changed where it holds an older version.
            unwritable = {k for k, v in source.items() if v is None and k in steady}
            found_now = classify(
                {k: v for k, v in source.items() if k in steady and v is not None},
                {k: v for k, v in lake.items() if k in steady and k not in unwritable},
            )
            found_now += [
                Difference(k[0], k[1], MISSING if lake.get(k) is None else CHANGED)
                for k in unwritable
            ]
            # A document deleted after the read and before the lake was checked leaves no row
            # whose seq would show it moving: a key missing in the lake counts only if the
            # source still holds the same document.
            missing = [(d.key, d.key_type) for d in found_now if d.kind == MISSING]
            raw = {canonical_key(d["_id"]): d for d in found}
            gone = await self._changed_since(missing, raw)
            result.differences.extend(d for d in found_now if (d.key, d.key_type) not in gone)
            todo = [*moving, *gone]
        result.unsettled = todo
        result.differences.sort(key=lambda d: key_order((d.key, d.key_type)))
        return result

    async def _changed_since(self, keys: Sequence[Key], read: Mapping[Key, Any]) -> set[Key]:
        """The keys whose source document is no longer the one `read` holds (as read)."""
        if not keys:
            return set()
        async with self._source() as reader:
            found = await reader.documents_by_ids([v for k in keys for v in lookup_values(*k)])
        now = {canonical_key(d["_id"]): d for d in found}
        return {
            k
            for k in keys
            if k not in now or k not in read or document_hash(now[k]) != document_hash(read[k])
        }

    def _lake_documents(
        self, version: int | None, keys: Sequence[Key]
    ) -> tuple[dict[Key, dict[str, Any] | None], dict[Key, str]]:
        if version is None:
            return {}, {}
        lake = open_lake(self.uri, self._options, version)
        try:
            rows = lake.rows_by_keys(keys)
        finally:
            lake.close()
        pairs = list(
            zip(rows.column("_id").to_pylist(), rows.column("_id_type").to_pylist(), strict=True)
        )
        docs = dict(zip(pairs, lake_documents(rows), strict=True))
        seqs = dict(zip(pairs, rows.column("_seq").to_pylist(), strict=True))
        return docs, seqs

    async def wait_applied_past(self, at: Timestamp) -> bool:
        """Wait until the table has applied every change up to cluster time `at`; False when
        that did not happen within the timeout."""
        deadline = time.monotonic() + self.settle_timeout_s
        while time.monotonic() < deadline:
            if await asyncio.to_thread(self._is_applied_past, at):
                return True
            await asyncio.sleep(0.25)
        return False

    def _is_applied_past(self, at: Timestamp) -> bool:
        """Every partition of the topic is applied past `at`: its last applied record is newer
        than `at`, or it has nothing left to apply and capture has read past `at`.

        Capture publishes changes in seq order, one transaction at a time, so one committed
        record newer than `at` anywhere means every change up to `at` is committed; without one
        (an idle collection) capture's checkpoint says how far it has read.
        """
        past = make_seq(at.time, at.inc, _REPAIR_POSITION)
        reader = PartitionReader(self._bootstrap, self.topic)
        try:
            partitions = reader.partitions()
            if not partitions:
                return True
            ids = {p: app_id(self.spec.name, self.topic, p) for p in partitions}
            table = TxnTable(self.uri, CURRENT_STATE_SCHEMA, self._options)
            versions = table.applied_versions(list(ids.values()))
            applied = {p: versions[ids[p]] for p in partitions}
            newest = {}  # partition -> seq of its last applied record
            for p, v in applied.items():
                if v is not None:
                    last = reader.read_batch({p: v}, 1, 0.0, 0.5)
                    newest[p] = _seq_of(last[0].value) if last and last[0].offset == v else ""
            idle = [p for p in partitions if newest.get(p, "") <= past]
            if not idle:
                return True
            pending = reader.read_batch(
                {p: (None if (v := applied[p]) is None else v + 1) for p in idle}, 1, 0.0, 0.5
            )
            if pending:
                return False
            if any(seq > past for seq in newest.values()):
                return True
            captured = self._captured_time()
            return captured is None or captured >= at
        finally:
            reader.close()

    def _captured_time(self) -> Timestamp | None:
        """Cluster time of capture's committed checkpoint (None: no checkpoint, or a strategy
        whose checkpoint carries none Lakeward can read, such as Debezium's)."""
        key = f"{self.spec.name}/{self.spec.source.capture.value}".encode()
        try:
            raw = read_last_value(self._bootstrap, checkpoint_topic(self._prefix), key, 5.0)
        except KafkaReadError:
            # Under load a transaction is nearly always open on the checkpoint topic and the
            # end is not reached in time; the caller polls again.
            return Timestamp(0, 0)
        if not raw:
            return None
        token = json_util.loads(raw)
        if isinstance(token, dict) and isinstance(token.get("ts"), Timestamp):
            return token["ts"]  # the oplog strategy's checkpoint
        data = token.get("_data") if isinstance(token, dict) else None
        if isinstance(data, str) and data.startswith("82") and len(data) >= 18:
            # A change stream resume token is KeyString-encoded, its cluster time first:
            # type byte 0x82, then seconds and increment, big-endian.
            raw_time = bytes.fromhex(data[2:18])
            return Timestamp(
                int.from_bytes(raw_time[:4], "big"), int.from_bytes(raw_time[4:], "big")
            )
        return None

    # -- 5. repair ---------------------------------------------------------------------------

    async def repair(self, keys: Sequence[Key]) -> int:
        """Re-emit the source state of `keys` through the topic: the document as an `r` event,
        or a delete where the source has none. Returns how many events were published."""
        database = self.spec.source.database
        version = await asyncio.to_thread(latest_version, self.uri, self._options)
        _, seqs = await asyncio.to_thread(self._lake_documents, version, keys)
        newest = max(seqs.values(), default="")
        deadline = time.monotonic() + self.settle_timeout_s
        async with self._source() as reader:
            # The re-emitted rows must be newer than the rows they replace (the MERGE keeps the
            # newer seq): wait for the cluster time to pass them. An idle replica set still
            # advances it (its periodic no-op writes); a row with a seq from the future is
            # re-emitted anyway and stays (docs/reconcile.md).
            read_from = await reader.majority_time()
            while (
                make_seq(read_from.time, read_from.inc, _REPAIR_POSITION) <= newest
                and time.monotonic() < deadline
            ):
                await asyncio.sleep(0.5)
                read_from = await reader.majority_time()
            found = await reader.documents_by_ids([v for k in keys for v in lookup_values(*k)])
        by_key = {canonical_key(d["_id"]): d for d in found}
        seq = make_seq(read_from.time, read_from.inc, _REPAIR_POSITION)
        now_ms = int(time.time() * 1000)
        records = []
        for key in keys:
            doc = by_key.get(key)
            event = ChangeEvent(
                op="r" if doc is not None else "d",
                database=database,
                collection=self.collection,
                key=key[0],
                key_type=key[1],
                seq=seq,
                after=doc,
                source_ts_ms=read_from.time * 1000,
                document_key={"_id": doc["_id"] if doc is not None else id_value(*key)},
            )
            records.append(
                OutgoingRecord(
                    self.topic, event.kafka_key, encode_envelope(event, self.spec.name, now_ms)
                )
            )
        await asyncio.to_thread(self._publish, records, read_from)
        return len(records)

    def _publish(self, records: list[OutgoingRecord], read_from: Timestamp) -> None:
        ensure_topic(self._bootstrap, self.topic)
        ensure_compacted_topic(self._bootstrap, checkpoint_topic(self._prefix))
        publisher = TransactionalPublisher(
            self._bootstrap, f"lakeward-{self.spec.name}-reconcile-{self.collection}"
        )
        try:
            for start in range(0, len(records), 1000):
                progress = OutgoingRecord(
                    checkpoint_topic(self._prefix),
                    f"{self.spec.name}/reconcile/{self.collection}".encode(),
                    json_util.dumps(
                        {"published": start + 1000, "read_from": read_from,
                         "at": dt.datetime.now(dt.UTC)}
                    ).encode(),
                )  # fmt: skip
                publisher.publish(records[start : start + 1000], progress)
        finally:
            publisher.close()


def _contiguous(
    leaves: Sequence[tuple[str | None, str | None]],
) -> list[tuple[str | None, str | None]]:
    """The leaves as the fewest key ranges: neighbours (one's upper bound the next's lower)
    merged, so a side reads each stretch of mismatching leaves once, not leaf by leaf."""

    def start(leaf: tuple[str | None, str | None]) -> tuple[int, Any]:
        return (0, ()) if leaf[0] is None else (1, order_key(decode_bound(leaf[0])))

    out: list[tuple[str | None, str | None]] = []
    for low, high in sorted(leaves, key=start):
        if out and out[-1][1] is not None and out[-1][1] == low:
            out[-1] = (out[-1][0], high)
        else:
            out.append((low, high))
    return out


def _seq_of(value: bytes | None) -> str:
    """The `seq` of a Lakeward envelope ("" if it has none)."""
    try:
        seq = orjson.loads(value or b"{}").get("seq")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    return seq if isinstance(seq, str) else ""


def _entries(
    docs: Sequence[dict[str, Any]], normal: Sequence[dict[str, Any] | None]
) -> list[tuple[Key, Any, bytes]]:
    """(key, order key, document hash) per source document; a document apply would
    dead-letter hashes as nothing, so it can never match a lake row."""
    out = []
    for doc, form in zip(docs, normal, strict=True):
        key = canonical_key(doc["_id"])
        out.append((key, order_key(doc["_id"]), document_hash(form) if form is not None else b""))
    return out
