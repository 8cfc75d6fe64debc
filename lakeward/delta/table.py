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
from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

__all__ = [
    "CURRENT_STATE_SCHEMA",
    "DEAD_LETTER_SCHEMA",
    "ConcurrentCommitError",
    "MergeOutcome",
    "TxnTable",
]

_TS = pa.timestamp("us", tz="UTC")

#: The slice's current-state row: the document as canonical Extended JSON plus lineage.
#: The apply issue replaces `_doc` with typed columns from the type factory.
CURRENT_STATE_SCHEMA = pa.schema(
    [
        pa.field("_id", pa.string(), nullable=False),
        pa.field("_id_type", pa.string(), nullable=False),
        pa.field("_doc", pa.string()),
        pa.field("_op", pa.string(), nullable=False),
        pa.field("_seq", pa.string(), nullable=False),
        pa.field("_source_ts", _TS),
        pa.field("_kafka_topic", pa.string(), nullable=False),
        pa.field("_kafka_partition", pa.int32(), nullable=False),
        pa.field("_kafka_offset", pa.int64(), nullable=False),
        pa.field("_ingested_at", _TS, nullable=False),
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

    def _load(self) -> DeltaTable | None:
        if self._table is None:
            try:
                self._table = DeltaTable(self.uri, storage_options=self._options)
            except TableNotFoundError:
                return None
        else:
            self._table.update_incremental()
        return self._table

    def ensure(self) -> DeltaTable:
        table = self._load()
        if table is not None:
            return table
        with contextlib.suppress(DeltaError):  # another writer created it first
            DeltaTable.create(self.uri, self.schema, mode="ignore", storage_options=self._options)
        self._table = None
        table = self._load()
        assert table is not None
        return table

    def applied_versions(self, app_ids: list[str]) -> dict[str, int | None]:
        """The last applied offset per app id (None: nothing applied yet)."""
        table = self._load()
        if table is None:
            return dict.fromkeys(app_ids)
        return {app_id: table.transaction_version(app_id) for app_id in app_ids}

    def merge_current_state(
        self,
        rows: pa.Table,
        versions: Mapping[str, int],
        read_versions: Mapping[str, int | None],
        keep_tombstones: bool = False,
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
            commit_properties=_txns(versions),
        )
        if keep_tombstones:
            merger = merger.when_matched_update_all(predicate=_NEWER)
            merger = merger.when_not_matched_insert_all()
        else:
            merger = merger.when_matched_delete(predicate=f"s._op = 'd' AND {_NEWER}")
            merger = merger.when_matched_update_all(predicate=f"s._op <> 'd' AND {_NEWER}")
            merger = merger.when_not_matched_insert_all(predicate="s._op <> 'd'")
        try:
            merger.execute()
        except CommitFailedError as exc:
            raise ConcurrentCommitError(f"{self.uri}: {exc}") from exc
        except DeltaError as exc:
            if "concurrent" in str(exc).lower():
                raise ConcurrentCommitError(f"{self.uri}: {exc}") from exc
            raise
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

    def append(
        self, rows: pa.Table, versions: Mapping[str, int], read_versions: Mapping[str, int | None]
    ) -> MergeOutcome:
        """Append rows with txns (dead letters, change logs), refusing if the versions moved."""
        table = self.ensure()
        self._refuse_if_moved(table, read_versions)
        try:
            write_deltalake(
                table, rows, mode="append", commit_properties=_txns(versions),
                storage_options=self._options or None,
            )  # fmt: skip
        except CommitFailedError as exc:
            raise ConcurrentCommitError(f"{self.uri}: {exc}") from exc
        table.update_incremental()
        return MergeOutcome(version=table.version(), rows=rows.num_rows)

    def _refuse_if_moved(self, table: DeltaTable, read: Mapping[str, int | None]) -> None:
        for app_id, before in read.items():
            now = table.transaction_version(app_id)
            if now != before:
                raise ConcurrentCommitError(
                    f"{self.uri}: txn {app_id} moved from {before} to {now} since it was read"
                )


def _txns(versions: Mapping[str, int]) -> CommitProperties:
    return CommitProperties(
        app_transactions=[Transaction(app_id, version) for app_id, version in versions.items()]
    )
