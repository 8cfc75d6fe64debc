"""Delta tables with `txn` actions: the Delta log is the truth for consumed Kafka offsets.

Every commit carries one `txn` action per Kafka partition it covers (app id
``<pipeline>/<topic>/<partition>``, version = the last offset applied). Before a commit the writer
reads those versions, drops records at or below them, and commits only if they have not moved;
delta-rs itself refuses a commit when another one with the same app id landed since the version it
read. So a replayed or zombie batch never applies twice.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import pyarrow as pa
from deltalake import (
    CommitProperties,
    DeltaTable,
    Transaction,
    WriterProperties,
    write_deltalake,
)
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from lakeward.resilience import Dependency, retry_call
from lakeward.typefactory import NULLS_COLUMN

__all__ = [
    "CURRENT_STATE_SCHEMA",
    "DEAD_LETTER_SCHEMA",
    "HASH_FIELD",
    "LINEAGE",
    "LINEAGE_SCHEMA",
    "RESERVED_COLUMNS",
    "ConcurrentCommitError",
    "MergeOutcome",
    "SchemaRewriteRefused",
    "TxnTable",
]

_TS = pa.timestamp("us", tz="UTC")

#: The key and lineage columns every current-state row starts with; the document's fields
#: follow as typed columns from the type factory (lakeward/typefactory.py), then `%nulls`.
LINEAGE_SCHEMA = pa.schema(
    [
        pa.field("_id", pa.string(), nullable=False),
        pa.field("_id_type", pa.string(), nullable=False),
        pa.field("_op", pa.string(), nullable=False),
        pa.field("_seq", pa.string(), nullable=False),
        pa.field("_source_ts", _TS),
        pa.field("_kafka_topic", pa.string(), nullable=False),
        pa.field("_kafka_partition", pa.int32(), nullable=False),
        pa.field("_kafka_offset", pa.int64(), nullable=False),
        pa.field("_ingested_at", _TS, nullable=False),
    ]
)
LINEAGE = tuple(LINEAGE_SCHEMA.names)
#: Names document columns never take (a source field `_id` is stored as `_id%%1`): the
#: lineage columns, `_before` (the change log's pre-image) and `_hash`, kept for
#: reconciliation's per-row hash. One set for every table, so a row's document columns are
#: told apart the same way whichever table it comes from.
RESERVED_COLUMNS = (*LINEAGE, "_before", "_hash")
#: A current-state row's hash of the document apply was given (lakeward.rowhash): what
#: reconciliation's `fast` mode compares; null on a tombstone.
HASH_FIELD = pa.field("_hash", pa.binary())
#: A new current-state table: lineage, the hash and the nulls column; documents add their
#: columns.
CURRENT_STATE_SCHEMA = pa.schema(
    [
        *LINEAGE_SCHEMA,
        HASH_FIELD,
        pa.field(NULLS_COLUMN, pa.list_(pa.field("element", pa.string()))),
    ]
)

DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("pipeline", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("kafka_topic", pa.string(), nullable=False),
        pa.field("kafka_partition", pa.int32(), nullable=False),
        pa.field("kafka_offset", pa.int64(), nullable=False),
        pa.field("key", pa.binary()),
        pa.field("value", pa.binary()),
        pa.field("dead_at", _TS, nullable=False),
    ]
)


#: The incoming change is newer than the row: a greater seq, or the same seq later in the same
#: partition (another producer's Debezium topic without transaction metadata can repeat a seq).
_NEWER = (
    "(s._seq > t._seq OR (s._seq = t._seq AND s._kafka_topic = t._kafka_topic"
    " AND s._kafka_partition = t._kafka_partition AND s._kafka_offset > t._kafka_offset))"
)


_SEQ = re.compile(r"[0-9a-f]{24}")
_MERGE_WRITER = WriterProperties(max_row_group_size=65_536, compression="SNAPPY")


class SchemaRewriteRefused(RuntimeError):
    """A schema change that needs a table rewrite this version will not do (see rewrite)."""


class ConcurrentCommitError(RuntimeError):
    """Another attempt committed first; re-read the txn versions and skip what is applied."""


@dataclass(frozen=True)
class MergeOutcome:
    version: int | None  # the table version written, None if nothing was committed
    rows: int


class TxnTable:
    """A Delta table written with per-partition `txn` versions."""

    def __init__(
        self, uri: str, schema: pa.Schema, storage_options: Mapping[str, str] | None = None
    ) -> None:
        self.uri = uri
        self.schema = schema
        self._options = dict(storage_options or {})
        self._table: DeltaTable | None = None
        self._schema_cache: tuple[str, pa.Schema] | None = None
        self.rewrite_row_limit = 100_000

    def _load(self) -> DeltaTable | None:
        """The table at its latest version; None if it does not exist yet.

        Raises TableStorageError for a wrong URI, missing or refused credentials, or a store
        that does not answer (`transient`).
        """
        from lakeward.delta.errors import check_storage_options, storage_error

        try:
            if self._table is None:
                check_storage_options(self.uri, self._options)
                self._table = DeltaTable(self.uri, storage_options=self._options)
            else:
                self._table.update_incremental()
        except (OSError, DeltaError) as exc:
            problem = storage_error(self.uri, self._options, exc)
            if problem is not None:
                raise problem from exc
            if isinstance(exc, TableNotFoundError) and self._table is None:
                return None
            raise
        return self._table

    def ensure(self) -> DeltaTable:
        from lakeward.delta.errors import storage_error

        table = self._load()
        if table is not None:
            return table
        try:
            # _load above already turned a wrong URI or credentials into TableStorageError.
            with contextlib.suppress(DeltaError):  # another writer created it first
                DeltaTable.create(
                    self.uri, self.schema, mode="ignore", storage_options=self._options
                )
        except OSError as exc:  # the store went away since
            problem = storage_error(self.uri, self._options, exc)
            if problem is None:
                raise
            raise problem from exc
        self._table = None
        table = self._load()
        assert table is not None
        return table

    def applied_versions(self, app_ids: list[str]) -> dict[str, int | None]:
        """The last applied offset per app id (None: nothing applied yet).

        A read of the log, so a brief store hiccup is retried here (bounded, with jitter)
        rather than failing the batch; a commit is never retried this way (its txn guard makes
        the activity's own retry the safe path)."""
        from lakeward.delta.errors import is_unavailable

        table = retry_call(
            self._load, dependency=Dependency.OBJECT_STORE, is_transient=is_unavailable
        )
        if table is None:
            return dict.fromkeys(app_ids)
        return {app_id: table.transaction_version(app_id) for app_id in app_ids}

    def merge_current_state(
        self,
        rows: pa.Table,
        versions: Mapping[str, int],
        read_versions: Mapping[str, int | None],
        keep_tombstones: bool = False,
        commit_metadata: Mapping[str, str] | None = None,
    ) -> MergeOutcome:
        """MERGE rows by (_id, _id_type), newer `_seq` wins, deletes applied; one commit with txns.

        `read_versions` are the versions the caller filtered against; if any moved, another
        attempt got there first and nothing is written. With `keep_tombstones` (while a snapshot's
        rows may still arrive) a delete leaves a row with `_op = 'd'` and no document instead of
        removing it, so an older snapshot row cannot bring the document back.
        """
        table = self.ensure()
        self._refuse_if_moved(table, read_versions)
        if rows.num_rows == 0 and not versions:
            return MergeOutcome(version=None, rows=0)
        merger = table.merge(
            rows,
            predicate="t._id = s._id AND t._id_type = s._id_type",
            source_alias="s",
            target_alias="t",
            commit_properties=_txns(versions, commit_metadata),
            # Not streamed: delta-rs then reads the batch's key range first and skips every
            # file outside it (inserts of new, time-ordered ids touch no file: 3.6 s -> 0.3 s
            # and 1.9 GB -> 0.25 GB for 20 000 inserts into 1M rows).
            streamed_exec=False,
            # Row groups of 64k rows: the writer flushes as it goes instead of buffering a
            # rewritten file whole (1.1 GB -> 0.77 GB peak for 20 000 updates of 1M rows);
            # Snappy, as delta-rs's default: a MERGE rewrites whole files, where zstd costs
            # 20 % more time (maintenance compacts into zstd later).
            writer_properties=_MERGE_WRITER,
        )
        if keep_tombstones:
            merger = merger.when_matched_update_all(predicate=_NEWER)
            merger = merger.when_not_matched_insert_all()
        else:
            merger = merger.when_matched_delete(predicate=f"s._op = 'd' AND {_NEWER}")
            merger = merger.when_matched_update_all(predicate=f"s._op <> 'd' AND {_NEWER}")
            merger = merger.when_not_matched_insert_all(predicate="s._op <> 'd'")
        before = table.version()
        with self._conflicts_as_concurrent_commits():
            merger.execute()
            if table.version() == before and versions:
                # delta-rs commits nothing for a MERGE that changes no row (only deletes of
                # rows that do not exist, only stale changes); the offsets still count as
                # applied, so an empty commit records them.
                write_deltalake(
                    table, rows.schema.empty_table(), mode="append", schema_mode="merge",
                    commit_properties=_txns(versions, commit_metadata),
                    storage_options=self._options or None,
                )  # fmt: skip
                table.update_incremental()
        return MergeOutcome(version=table.version(), rows=rows.num_rows)

    def purge_tombstones(self) -> int:
        """Remove the rows of deleted documents kept during a snapshot; returns how many."""
        table = self.ensure()
        metrics = table.delete("_op = 'd'")
        return int(metrics.get("num_deleted_rows", 0))

    def sweep(self, before_seq: str) -> int:
        """Remove the rows older than `before_seq`; returns how many.

        After a snapshot has been applied, a row it did not rewrite (and no change since) is a
        document that no longer exists: deleted while no change reached the lake.
        """
        if not _SEQ.fullmatch(before_seq):
            raise ValueError(f"sweep: {before_seq!r} is not a seq (24 hex digits)")
        table = self.ensure()
        metrics = table.delete(f"_seq < '{before_seq}'")
        return int(metrics.get("num_deleted_rows", 0))

    def arrow_schema(self) -> pa.Schema:
        """The table's schema as Arrow, as of the last read of the log (`applied_versions` reads
        it at the start of every batch, so this reads no more); the Arrow form is cached while
        the schema is unchanged."""
        table = self._table if self._table is not None else self.ensure()
        delta_schema = table.schema()
        key = delta_schema.to_json()
        if self._schema_cache is None or self._schema_cache[0] != key:
            self._schema_cache = (key, pa.schema(delta_schema.to_arrow()))
        return self._schema_cache[1]

    def evolve(self, schema: pa.Schema, metadata: Mapping[str, str]) -> int:
        """Add the new columns and struct fields of `schema` (a superset of the table's);
        returns the version of the metadata-only commit, which carries `metadata`."""
        table = self.ensure()
        with self._conflicts_as_concurrent_commits():
            write_deltalake(
                table, schema.empty_table(), mode="append", schema_mode="merge",
                commit_properties=CommitProperties(custom_metadata=dict(metadata)),
                storage_options=self._options or None,
            )  # fmt: skip
        table.update_incremental()
        return table.version()

    def rewrite(self, schema: pa.Schema, metadata: Mapping[str, str]) -> int:
        """Rewrite every row into `schema` (a column's type widened: int32 -> int64 -> double).

        delta-rs keeps a column's type on a merge-mode append (it would cast int64 values into
        the int32 column), so widening rewrites the data files, streaming batch by batch; the
        cast is Arrow's safe cast, which refuses any value it would change. txn versions live
        in the log and are not touched. Returns the version written.

        Refused (SchemaRewriteRefused) above `rewrite_row_limit` rows: delta-rs 1.6.6 aborts
        the whole process (a panic that cannot unwind) writing a few hundred thousand rows of
        nested documents read back from a table (reproduced with plain `write_deltalake`), and
        a worker that crashes on every retry would take its other pipelines down with it.
        """
        table = self.ensure()
        rows = sum(table.get_add_actions(flatten=True).column("num_records").to_pylist())
        if rows > self.rewrite_row_limit:
            raise SchemaRewriteRefused(
                f"{self.uri}: widening a column needs a rewrite of its {rows:,} rows; this "
                f"version rewrites tables of up to {self.rewrite_row_limit:,} rows (delta-rs "
                "1.6.6 crashes on larger nested rewrites). Recreate the table with a "
                "re-snapshot, or keep the field's type stable at the source"
            )
        batches = table.to_pyarrow_dataset().to_batches()

        def rewritten(batch: pa.RecordBatch) -> pa.RecordBatch:
            columns = [
                batch.column(f.name).cast(f.type)
                if f.name in batch.schema.names
                else pa.nulls(batch.num_rows, f.type)
                for f in schema
            ]
            return pa.RecordBatch.from_arrays(columns, schema=schema)

        reader = pa.RecordBatchReader.from_batches(schema, (rewritten(b) for b in batches))
        with self._conflicts_as_concurrent_commits():
            write_deltalake(
                table, reader, mode="overwrite", schema_mode="overwrite",
                commit_properties=CommitProperties(custom_metadata=dict(metadata)),
                storage_options=self._options or None,
            )  # fmt: skip
        table.update_incremental()
        return table.version()

    def append(
        self,
        rows: pa.Table,
        versions: Mapping[str, int],
        read_versions: Mapping[str, int | None],
        commit_metadata: Mapping[str, str] | None = None,
    ) -> MergeOutcome:
        """Append rows with txns (dead letters, change logs), refusing if the versions moved."""
        table = self.ensure()
        self._refuse_if_moved(table, read_versions)
        with self._conflicts_as_concurrent_commits():
            write_deltalake(
                table, rows, mode="append", commit_properties=_txns(versions, commit_metadata),
                storage_options=self._options or None,
            )  # fmt: skip
        table.update_incremental()
        return MergeOutcome(version=table.version(), rows=rows.num_rows)

    @contextlib.contextmanager
    def _conflicts_as_concurrent_commits(self) -> Iterator[None]:
        """A commit another writer's commit conflicts with (data, txn or schema) raises
        ConcurrentCommitError: the retry re-reads versions and schema and skips what landed."""
        try:
            yield
        except CommitFailedError as exc:
            self._table = None  # re-read the log, schema included, before the next attempt
            raise ConcurrentCommitError(f"{self.uri}: {exc}") from exc
        except DeltaError as exc:
            if "concurrent" not in str(exc).lower():
                raise
            self._table = None
            raise ConcurrentCommitError(f"{self.uri}: {exc}") from exc

    def _refuse_if_moved(self, table: DeltaTable, read: Mapping[str, int | None]) -> None:
        for app_id, before in read.items():
            now = table.transaction_version(app_id)
            if now != before:
                raise ConcurrentCommitError(
                    f"{self.uri}: txn {app_id} moved from {before} to {now} since it was read"
                )


def _txns(
    versions: Mapping[str, int], metadata: Mapping[str, str] | None = None
) -> CommitProperties:
    return CommitProperties(
        custom_metadata=dict(metadata) if metadata else None,
        app_transactions=[Transaction(app_id, version) for app_id, version in versions.items()],
    )
