"""Apply: one Kafka micro-batch into a Delta current-state table, exactly once.

The kafka-delta-ingest pattern: read the `txn` versions from the table, read Kafka from
version + 1, collapse changes per key to the newest `seq`, MERGE, and commit the data together
with the new versions. Poison records go to the dead-letter table and the batch goes on.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa

from lakeward import extjson
from lakeward.delta.table import (
    CURRENT_STATE_SCHEMA,
    DEAD_LETTER_SCHEMA,
    HASH_FIELD,
    LINEAGE,
    LINEAGE_SCHEMA,
    RESERVED_COLUMNS,
    ConcurrentCommitError,
    TxnTable,
)
from lakeward.events import ChangeEvent, EnvelopeError, NotAChangeError, decode_envelope
from lakeward.kafka.consumer import ConsumedRecord, PartitionReader
from lakeward.logs import Summary
from lakeward.rowhash import document_bson_hash
from lakeward.schema_plan import BatchPlan, plan_batch
from lakeward.tracing import ending, start_apply_span
from lakeward.typefactory import NULLS_COLUMN, from_arrow
from workflows.spec import SchemaPolicy

__all__ = [
    "CHANGE_LOG_SCHEMA",
    "DEFAULT_MAX_RECORD_BYTES",
    "ApplyOutcome",
    "BatchApplier",
    "ConcurrentCommitError",
    "DeadLetterApplier",
    "app_id",
    "document_columns",
    "documents",
]

_log = logging.getLogger("lakeward.apply")

#: MongoDB's own document limit: a larger record cannot be one document's change.
DEFAULT_MAX_RECORD_BYTES = 16 * 1024 * 1024


def app_id(pipeline: str, topic: str, partition: int) -> str:
    return f"{pipeline}/{topic}/{partition}"


@dataclass
class ApplyOutcome:
    records: int = 0
    applied: int = 0
    dead_letters: int = 0
    skipped_already_applied: int = 0
    table_version: int | None = None
    #: partition -> last offset now recorded in the table
    offsets: dict[int, int] = field(default_factory=dict)
    max_source_ts_ms: int = 0
    tombstones_purged: int = 0
    rows_swept: int = 0
    #: Schema changes committed (each a metadata commit or, for a widening, a rewrite).
    schema_changes: int = 0
    #: Dead letters by reason (not_json, unknown_op, missing_id, schema_conflict, ...).
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    #: Documents the schema policy converted (coerce) or kept as Extended JSON (permissive).
    coerced: int = 0
    kept_as_json: int = 0
    #: Records waiting in the topic after this batch (an estimate, see PartitionReader.backlog).
    backlog: int = 0
    # For lakeward.metrics (record_apply): the batch as a user watches it.
    backlog_by_partition: dict[int, int] = field(default_factory=dict)
    #: Applied changes by op (what `applied` counts).
    ops: dict[str, int] = field(default_factory=dict)
    min_source_ts_ms: int = 0
    committed_at: float = 0.0  # epoch seconds, once the MERGE committed
    commit_s: float = 0.0
    columns_added: int = 0
    columns_widened: int = 0
    type_conversion_failures: int = 0
    #: (collection, reason) -> capture's dead letters moved into the table (DeadLetterApplier).
    dead_letter_collections: dict[tuple[str, str], int] = field(default_factory=dict)


@dataclass
class _Decoded:
    record: ConsumedRecord
    event: ChangeEvent


class BatchApplier:
    """Applies micro-batches of one topic to one table; keep one per worker and reuse it."""

    def __init__(
        self,
        pipeline: str,
        reader: PartitionReader,
        table: TxnTable,
        dead_letters: TxnTable,
        schema_policy: SchemaPolicy = SchemaPolicy.permissive,
        max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
        change_log: TxnTable | None = None,
        change_log_before: bool = False,
        collection: str = "",
    ) -> None:
        self.pipeline = pipeline
        self.collection = collection  # for spans and logs
        self._summary = Summary(_log, "apply progress")
        self.reader = reader
        self.table = table
        self.dead_letters = dead_letters
        self.schema_policy = schema_policy
        self.max_record_bytes = max_record_bytes
        self.change_log = change_log
        self.change_log_before = change_log_before

    def apply_once(
        self,
        max_records: int,
        max_wait_s: float,
        idle_s: float,
        keep_tombstones: bool = False,
        purge_tombstones: bool = False,
        sweep_before_seq: str = "",
    ) -> ApplyOutcome:
        """Apply one micro-batch. `keep_tombstones` while snapshot rows may still arrive;
        `purge_tombstones` once they have all been applied (after this batch's commit), and
        with it `sweep_before_seq`: remove rows the snapshot did not rewrite (see
        TxnTable.sweep)."""
        outcome = self._apply(max_records, max_wait_s, idle_s, keep_tombstones)
        if purge_tombstones:
            outcome.tombstones_purged = self.table.purge_tombstones()
            if sweep_before_seq:
                outcome.rows_swept = self.table.sweep(sweep_before_seq)
        return outcome

    def _apply(
        self, max_records: int, max_wait_s: float, idle_s: float, keep_tombstones: bool
    ) -> ApplyOutcome:
        began_ns = time.time_ns()
        read = _read_unapplied(
            self.pipeline, self.reader, self.table, max_records, max_wait_s, idle_s
        )
        if read is None:
            time.sleep(min(idle_s, 1.0))  # capture creates the topic; nothing to apply before
            return ApplyOutcome()
        outcome = read.outcome()
        if not read.fresh:
            return outcome
        # The batch's span starts at the read: its parent comes from the records' headers.
        span = start_apply_span(
            self.pipeline,
            self.collection,
            (r.headers for r in read.fresh),
            len(read.fresh),
            start_time_ns=began_ns,
        )
        with ending(span, current=True):
            self._commit(read, outcome, keep_tombstones)
            committed = {
                "records": len(read.fresh),
                "applied": outcome.applied,
                "dead_letters": outcome.dead_letters,
                "schema_changes": outcome.schema_changes,
                "delta_version": outcome.table_version,
            }
            span.set_attributes({f"lakeward.{k}": v for k, v in committed.items() if v is not None})
            _log.debug("batch committed", extra=committed)
            self._summary.add(batches=1, records=len(read.fresh), applied=outcome.applied)
        return outcome

    def _commit(self, read: _Unapplied, outcome: ApplyOutcome, keep_tombstones: bool) -> None:
        """Decode, plan, dead-letter, MERGE and commit the fresh records of `read` into
        `outcome`."""
        decoded, poison = _decode(read.fresh, self.max_record_bytes)
        last = read.last()
        outcome.backlog_by_partition = self.reader.backlog_by_partition()
        outcome.backlog = sum(outcome.backlog_by_partition.values())

        items = _newest_per_key(decoded)
        table_schema = self.table.arrow_schema()
        if HASH_FIELD.name not in table_schema.names:
            table_schema = self._add_hash_column(table_schema)
        plan = plan_batch(
            document_columns(table_schema),
            [d.event.after if d.event.op != "d" else None for d in items],
            self.schema_policy,
            RESERVED_COLUMNS,
        )
        poison.extend((items[i].record, *why) for i, why in plan.rejected.items())
        if poison:
            self._dead_letter(poison, last)
            outcome.dead_letters = len(poison)
            for _, reason, _ in poison:
                reasons = outcome.dead_letter_reasons
                reasons[reason] = reasons.get(reason, 0) + 1
        metadata = {"lakeward.pipeline": self.pipeline}
        if plan.changed or plan.conflicts:
            summary = json.dumps(plan.summary())
            metadata["lakeward.schema"] = summary
        if self.change_log is not None:
            outcome.schema_changes += self._log_changes(decoded, last)
        if plan.changed:
            self._evolve(self.table, table_schema, plan, metadata)
            outcome.schema_changes += 1
        rows = _table_rows([items[i] for i in plan.kept], plan, hashed=True)
        commit_began = time.monotonic()
        merged = self.table.merge_current_state(
            rows,
            last,
            {a: read.versions[a] for a in last},
            keep_tombstones=keep_tombstones,
            commit_metadata=metadata,
        )
        outcome.commit_s = time.monotonic() - commit_began
        outcome.committed_at = time.time()
        outcome.applied = len(decoded) - len(plan.rejected)  # changes, before collapsing
        _describe_for_metrics(outcome, decoded, items, plan, self.schema_policy)
        outcome.coerced = plan.coerced
        outcome.kept_as_json = plan.kept_as_json
        outcome.table_version = merged.version
        outcome.offsets = read.offsets(last)
        outcome.max_source_ts_ms = max((d.event.source_ts_ms for d in decoded), default=0)

    def _log_changes(self, decoded: list[_Decoded], last: Mapping[str, int]) -> int:
        """Append every change of the batch to the change-log table, exactly once; returns the
        schema changes it made. The log takes every change as it happened (conflicting values
        kept as Extended JSON, whatever the pipeline's policy): it is the record, not a view."""
        log = self.change_log
        assert log is not None
        already = log.applied_versions(list(last))
        fresh = [d for d in decoded if _is_new(d.record, already, self.pipeline)]
        if not fresh:
            return 0
        table_schema = log.arrow_schema()
        plan = plan_batch(
            document_columns(table_schema),
            [d.event.after for d in fresh],
            SchemaPolicy.permissive,
            RESERVED_COLUMNS,
        )
        metadata = {"lakeward.pipeline": self.pipeline}
        if plan.changed:
            metadata["lakeward.schema"] = json.dumps(plan.summary())
            self._evolve(log, table_schema, plan, metadata, extra=[_BEFORE_FIELD])
        # A change no column can hold (a date beyond Delta's range) is left out of the log; the
        # current state dead-letters it when it is its key's newest change in the batch.
        kept = [fresh[i] for i in plan.kept]
        rows = _table_rows(kept, plan)
        before = [
            extjson.dumps(d.event.before)
            if self.change_log_before and d.event.before is not None
            else None
            for d in kept
        ]
        rows = rows.append_column(_BEFORE_FIELD, pa.array(before, pa.string()))
        log.append(rows, dict(last), already, commit_metadata=metadata)
        return int(plan.changed)

    def _evolve(
        self,
        table: TxnTable,
        table_schema: pa.Schema,
        plan: BatchPlan,
        metadata: dict[str, str],
        extra: Sequence[pa.Field] = (),
    ) -> None:
        """Commit the batch's schema change before its data, logged with both schemas."""
        lineage = [
            table_schema.field(n) for n in (*LINEAGE, HASH_FIELD.name) if n in table_schema.names
        ]
        schema = pa.schema([*lineage, *extra, *plan.schema])
        if plan.widened:
            version = table.rewrite(schema, metadata)
        else:
            version = table.evolve(schema, metadata)
        _log.info(
            "schema changed",
            extra={
                "pipeline": self.pipeline,
                "table": table.uri,
                "delta_version": version,
                "change": plan.summary(),
                "old_schema": str(document_columns(table_schema)),
                "new_schema": str(plan.schema),
            },
        )

    def _add_hash_column(self, table_schema: pa.Schema) -> pa.Schema:
        """A table created before apply wrote `_hash` gets the column (null in its old rows,
        which reconciliation's `fast` mode then declines: docs/reconcile.md)."""
        lineage = [table_schema.field(name) for name in LINEAGE]
        schema = pa.schema([*lineage, HASH_FIELD, *document_columns(table_schema)])
        version = self.table.evolve(schema, {"lakeward.pipeline": self.pipeline})
        _log.info(
            "added the _hash column",
            extra={"pipeline": self.pipeline, "table": self.table.uri, "delta_version": version},
        )
        return self.table.arrow_schema()

    def _dead_letter(
        self, poison: list[tuple[ConsumedRecord, str, str]], last: Mapping[str, int]
    ) -> None:
        # The dead-letter table carries the same txn versions, so a retried batch writes its
        # dead letters once even when the data commit after it failed.
        already = self.dead_letters.applied_versions(list(last))
        todo = [p for p in poison if _is_new(p[0], already, self.pipeline)]
        if not todo:
            return
        self.dead_letters.append(_dead_letter_rows(self.pipeline, todo), dict(last), already)


def _describe_for_metrics(
    outcome: ApplyOutcome,
    decoded: list[_Decoded],
    items: list[_Decoded],
    plan: BatchPlan,
    policy: SchemaPolicy,
) -> None:
    """What lakeward.metrics.record_apply reports of a committed batch."""
    rejected = Counter(items[i].event.op for i in plan.rejected)
    outcome.ops = dict(Counter(d.event.op for d in decoded) - rejected)
    outcome.min_source_ts_ms = min((d.event.source_ts_ms for d in decoded), default=0)
    outcome.columns_added = len(plan.added)
    outcome.columns_widened = len(plan.widened)
    # Under `coerce` a schema conflict is a conversion the factory could not make.
    failed = {"type_conversion"} | ({"schema_conflict"} if policy is SchemaPolicy.coerce else set())
    outcome.type_conversion_failures = sum(r in failed for r, _ in plan.rejected.values())


class DeadLetterApplier:
    """Moves capture's dead-letter records (`<prefix>._dead_letters`: changes too large to
    publish) of one pipeline into its dead-letter table, exactly once.

    The topic is shared by the pipelines of a prefix: records of other pipelines are passed
    over, but the table's txn versions still advance past them (an empty commit records them),
    so each pipeline reads each record once.
    """

    def __init__(self, pipeline: str, reader: PartitionReader, table: TxnTable) -> None:
        self.pipeline = pipeline
        self.reader = reader
        self.table = table

    def apply_once(self, max_records: int, max_wait_s: float, idle_s: float) -> ApplyOutcome:
        read = _read_unapplied(
            self.pipeline, self.reader, self.table, max_records, max_wait_s, idle_s
        )
        if read is None:
            return ApplyOutcome()  # capture creates the topic with its first run
        outcome = read.outcome()
        if read.fresh:
            mine = [(r, v) for r in read.fresh if (v := _dead_letter_value(r, self.pipeline))]
            last = read.last()
            rows = _dead_letter_rows(
                self.pipeline,
                [(r, str(v.get("kind") or "capture"), str(v.get("reason") or "")) for r, v in mine],
            )
            committed = self.table.append(rows, last, {a: read.versions[a] for a in last})
            outcome.dead_letters = len(mine)
            kinds = ((str(v.get("collection")), str(v.get("kind") or "capture")) for _, v in mine)
            outcome.dead_letter_collections = dict(Counter(kinds))
            outcome.table_version = committed.version
            outcome.offsets = read.offsets(last)
        return outcome


@dataclass
class _Unapplied:
    """One read of a topic from the table's txn versions on, and what of it is not applied."""

    ids: dict[int, str]  # partition -> txn app id
    versions: dict[str, int | None]  # app id -> last applied offset, as read before the batch
    records: list[ConsumedRecord]
    fresh: list[ConsumedRecord]  # the records past those versions

    def last(self) -> dict[str, int]:
        """App id -> the last fresh offset per partition: the versions a commit records."""
        last: dict[str, int] = {}
        for r in self.fresh:
            app = self.ids[r.partition]
            last[app] = max(last.get(app, -1), r.offset)
        return last

    def offsets(self, committed: Mapping[str, int] | None = None) -> dict[int, int]:
        """Partition -> last applied offset, after `committed` (app id -> version) if given."""
        versions = {**self.versions, **(committed or {})}
        return {p: v for p, a in self.ids.items() if (v := versions[a]) is not None}

    def outcome(self) -> ApplyOutcome:
        return ApplyOutcome(
            records=len(self.records),
            skipped_already_applied=len(self.records) - len(self.fresh),
            offsets=self.offsets(),
        )


def _read_unapplied(
    pipeline: str,
    reader: PartitionReader,
    table: TxnTable,
    max_records: int,
    max_wait_s: float,
    idle_s: float,
) -> _Unapplied | None:
    """Read from the offsets after the table's txn versions (None: the topic does not exist)."""
    partitions = reader.partitions()
    if not partitions:
        return None
    ids = {p: app_id(pipeline, reader.topic, p) for p in partitions}
    versions = table.applied_versions(list(ids.values()))
    start = {p: _next_offset(versions[ids[p]]) for p in partitions}
    records = reader.read_batch(start, max_records, max_wait_s, idle_s)
    fresh = [r for r in records if (v := versions[ids[r.partition]]) is None or r.offset > v]
    return _Unapplied(ids, versions, records, fresh)


def _dead_letter_rows(pipeline: str, letters: list[tuple[ConsumedRecord, str, str]]) -> pa.Table:
    """Dead-letter table rows for (record, reason, error) triples, with the original bytes."""
    now = dt.datetime.now(dt.UTC)
    return pa.Table.from_pylist(
        [
            {"pipeline": pipeline, "reason": reason, "error": error, "kafka_topic": r.topic,
             "kafka_partition": r.partition, "kafka_offset": r.offset, "key": r.key,
             "value": r.value, "dead_at": now}
            for r, reason, error in letters
        ],
        schema=DEAD_LETTER_SCHEMA,
    )  # fmt: skip


def _dead_letter_value(record: ConsumedRecord, pipeline: str) -> dict[str, Any] | None:
    """The record's JSON value if it is a dead letter of `pipeline` (else None)."""
    try:
        value = orjson.loads(record.value or b"null")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict) or value.get("pipeline") != pipeline:
        return None
    return value


def _is_new(record: ConsumedRecord, already: Mapping[str, int | None], pipeline: str) -> bool:
    version = already.get(app_id(pipeline, record.topic, record.partition))
    return version is None or record.offset > version


def _next_offset(version: int | None) -> int | None:
    return None if version is None else version + 1


def _decode(
    records: list[ConsumedRecord], max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
) -> tuple[list[_Decoded], list[tuple[ConsumedRecord, str, str]]]:
    decoded, poison = [], []
    for record in records:
        if record.value is None:
            continue  # a Kafka tombstone after a delete: compaction's business, not a change
        if len(record.value) > max_record_bytes:
            error = f"record of {len(record.value)} bytes is over the limit of {max_record_bytes}"
            poison.append((record, "oversize", error))
            continue
        try:
            decoded.append(_Decoded(record, decode_envelope(record.value, record.key)))
        except NotAChangeError:
            # Debezium's tombstones, heartbeats, transaction metadata: valid, but not changes.
            continue
        except EnvelopeError as exc:
            poison.append((record, exc.reason, str(exc)))
    return decoded, poison


def _newest_per_key(decoded: list[_Decoded]) -> list[_Decoded]:
    newest: dict[tuple[str, str], _Decoded] = {}
    for item in decoded:
        k = (item.event.key, item.event.key_type)
        # `>=`: records of one key come from one partition in offset order, so on equal seqs
        # (other producers' Debezium topics without transaction metadata) the later one wins.
        if k not in newest or item.event.seq >= newest[k].event.seq:
            newest[k] = item
    return list(newest.values())


def documents(rows: pa.Table) -> list[dict[str, Any] | None]:
    """The documents of current-state rows (as read from the table), None for tombstones."""
    names = document_columns(rows.schema).names
    docs = from_arrow(rows.select(names))
    ops = rows.column("_op").to_pylist()
    return [None if op == "d" else doc for op, doc in zip(ops, docs, strict=True)]


def document_columns(table_schema: pa.Schema) -> pa.Schema:
    """The document part of a current-state (or change-log) table's schema."""
    return pa.schema([f for f in table_schema if f.name not in RESERVED_COLUMNS])


#: The change log's own column: the document before the change, as canonical Extended JSON.
_BEFORE_FIELD = pa.field("_before", pa.string())
#: A new change-log table: lineage, `_before`, the nulls column; documents add their columns.
CHANGE_LOG_SCHEMA = pa.schema(
    [*LINEAGE_SCHEMA, _BEFORE_FIELD, CURRENT_STATE_SCHEMA.field(NULLS_COLUMN)]
)


def _table_rows(items: list[_Decoded], plan: BatchPlan, hashed: bool = False) -> pa.Table:
    """Lineage columns (and `_hash` when `hashed`), then the planned document columns, one row
    per item."""
    now = dt.datetime.now(dt.UTC)
    lineage = pa.Table.from_pylist(
        [
            {
                "_id": d.event.key,
                "_id_type": d.event.key_type,
                "_op": d.event.op,
                "_seq": d.event.seq,
                "_source_ts": dt.datetime.fromtimestamp(d.event.source_ts_ms / 1000, dt.UTC),
                "_kafka_topic": d.record.topic,
                "_kafka_partition": d.record.partition,
                "_kafka_offset": d.record.offset,
                "_ingested_at": now,
            }
            for d in items
        ],
        schema=LINEAGE_SCHEMA,
    )
    if hashed:
        hashes = [_row_hash(d.event) for d in items]
        lineage = lineage.append_column(HASH_FIELD, pa.array(hashes, HASH_FIELD.type))
    columns = plan.columns
    return pa.Table.from_arrays(
        [*lineage.columns, *columns.columns], schema=pa.schema([*lineage.schema, *columns.schema])
    )


def _row_hash(event: ChangeEvent) -> bytes | None:
    """The row's `_hash` (lakeward.rowhash), None for a delete."""
    return None if event.op == "d" or event.after is None else document_bson_hash(event.after)
