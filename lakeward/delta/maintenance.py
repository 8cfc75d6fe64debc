"""Table upkeep: compaction, checkpoints and vacuum over one Delta table (docs/maintenance.md).

Every apply commit adds at least one small file and one log entry; left alone, reads slow down
with the file count and the storage holds every file ever written. `maintain` runs the three steps
the pipeline schedules, in order:

1. **compact** small files into files of about the target size, once enough of them are small.
   The commit only rearranges data (`dataChange: false`) and carries no `txn` actions, so the
   applied offsets stay where they are.
2. **checkpoint** the log (one Parquet file readers start from) and delete log entries older than
   the table's `delta.logRetentionDuration`.
3. **vacuum**: delete data files no version inside the retention window needs.

Each step is idempotent, so a retried or repeated run is safe. Maintenance never purges
tombstones (rows of deleted documents kept during a snapshot): the pipeline does that through
`TxnTable.purge_tombstones` once the snapshot is applied.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable, WriterProperties
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from workflows.spec import Maintenance

__all__ = [
    "DEFAULT_RETENTION_HOURS",
    "RETENTION_PROPERTY",
    "CheckpointResult",
    "CompactionResult",
    "MaintenanceConflictError",
    "MaintenanceError",
    "MaintenanceResult",
    "MissingTableError",
    "NestedTableError",
    "VacuumResult",
    "checkpoint",
    "compact",
    "maintain",
    "vacuum",
]

#: Files of 128 MB in row groups of 64k rows: readers (and the MERGE that rewrites a file)
#: decode one row group at a time, so a compacted file is not one 600k-row block in memory.
ROW_GROUPS = WriterProperties(max_row_group_size=65_536, compression="ZSTD")

MIB = 1024 * 1024
#: How long a removed file stays known to the log (its tombstone is kept in checkpoints).
RETENTION_PROPERTY = "delta.deletedFileRetentionDuration"
#: Delta's default for RETENTION_PROPERTY when a table does not set it: one week.
DEFAULT_RETENTION_HOURS = 168


class MaintenanceError(RuntimeError):
    """A maintenance step failed; the message names the table and the step."""


class MaintenanceConflictError(MaintenanceError):
    """A concurrent commit (an apply MERGE or DELETE) won; nothing was changed, run again later."""


class MissingTableError(MaintenanceError):
    """The table does not exist yet: nothing has been applied to it."""


class NestedTableError(MaintenanceError):
    """Another Delta table lives inside this one's directory; vacuum would delete its files."""


@dataclass(frozen=True)
class CompactionResult:
    #: Whether optimize ran (enough small files); False: below min_files_to_compact.
    ran: bool
    files_before: int
    #: Files smaller than the target before compaction.
    small_files: int
    files_after: int
    files_removed: int = 0
    files_added: int = 0
    bytes_removed: int = 0
    bytes_added: int = 0
    #: The version the compaction committed; None when nothing was rewritten.
    version: int | None = None


@dataclass(frozen=True)
class CheckpointResult:
    #: The table version the checkpoint was written at.
    version: int


@dataclass(frozen=True)
class VacuumResult:
    retention_hours: int
    files_deleted: int
    #: Whether the table's RETENTION_PROPERTY was changed to retention_hours first.
    retention_updated: bool = False


@dataclass(frozen=True)
class MaintenanceResult:
    uri: str
    #: The table does not exist yet; no step ran.
    skipped: bool = False
    compaction: CompactionResult | None = None
    checkpoint: CheckpointResult | None = None
    vacuum: VacuumResult | None = None


def compact(
    uri: str, storage_options: Mapping[str, str], target_bytes: int, min_files_to_compact: int
) -> CompactionResult:
    """Rewrite the table's small files into files of about `target_bytes`.

    Runs only when at least `min_files_to_compact` files are smaller than the target. Raises
    MaintenanceConflictError when a concurrent commit removed files the compaction read (the
    table is unchanged), MissingTableError when there is no table.
    """
    return _compact(_open(uri, storage_options), uri, target_bytes, min_files_to_compact)


def checkpoint(uri: str, storage_options: Mapping[str, str]) -> CheckpointResult:
    """Write a checkpoint at the latest version and delete expired log entries."""
    return _checkpoint(_open(uri, storage_options), uri)


def vacuum(uri: str, storage_options: Mapping[str, str], retention_hours: int) -> VacuumResult:
    """Delete files no version of the last `retention_hours` needs; returns how many.

    First sets the table's `delta.deletedFileRetentionDuration` to `retention_hours` if it
    differs, so checkpoints keep every tombstone exactly as long as vacuum waits (see
    docs/maintenance.md). Then a full vacuum: files removed from the table more than
    `retention_hours` ago, and files no commit references (a losing writer's output) written
    more than `retention_hours` ago. Raises NestedTableError instead of deleting another table's
    files.
    """
    return _vacuum(_open(uri, storage_options), uri, retention_hours)


def maintain(
    uri: str,
    storage_options: Mapping[str, str],
    settings: Maintenance,
    on_step: Callable[[str], None] | None = None,
) -> MaintenanceResult:
    """Compact, then checkpoint, then vacuum one table, as the pipeline's spec says.

    `on_step` is called with the step's name before each step (the activity heartbeats there).
    A table that does not exist yet is skipped. Raises MaintenanceConflictError when a concurrent
    commit won (retry later), MaintenanceError for any other failure.
    """
    try:
        table = _open(uri, storage_options)
    except MissingTableError:
        return MaintenanceResult(uri=uri, skipped=True)
    step = on_step or (lambda _: None)
    step("compact")
    compaction = _compact(table, uri, settings.target_file_mb * MIB, settings.min_files_to_compact)
    step("checkpoint")
    checkpointed = _checkpoint(table, uri)
    step("vacuum")
    vacuumed = _vacuum(table, uri, settings.vacuum_retention_hours)
    return MaintenanceResult(
        uri=uri, compaction=compaction, checkpoint=checkpointed, vacuum=vacuumed
    )


def _open(uri: str, storage_options: Mapping[str, str]) -> DeltaTable:
    try:
        with _translated(uri, "open"):
            return DeltaTable(uri, storage_options=dict(storage_options))
    except TableNotFoundError as exc:
        raise MissingTableError(f"{uri}: no Delta table here yet") from exc


@contextlib.contextmanager
def _translated(uri: str, step: str) -> Iterator[None]:
    try:
        yield
    except TableNotFoundError:
        raise
    except CommitFailedError as exc:
        raise MaintenanceConflictError(
            f"{uri}: {step} lost to a concurrent commit and changed nothing ({exc}); "
            "maintenance is idempotent: run it again"
        ) from exc
    except (DeltaError, OSError) as exc:
        raise MaintenanceError(f"{uri}: {step} failed: {exc}") from exc


def _compact(
    table: DeltaTable, uri: str, target_bytes: int, min_files_to_compact: int
) -> CompactionResult:
    with _translated(uri, "compaction"):
        table.update_incremental()
        before = _file_sizes(table)
        small = sum(1 for size in before if size < target_bytes)
        if small < min_files_to_compact:
            return CompactionResult(
                ran=False, files_before=len(before), small_files=small, files_after=len(before)
            )
        read_version = table.version()
        metrics = table.optimize.compact(target_size=target_bytes, writer_properties=ROW_GROUPS)
        removed = int(metrics.get("numFilesRemoved", 0))
        return CompactionResult(
            ran=True,
            files_before=len(before),
            small_files=small,
            files_after=len(_file_sizes(table)),
            files_removed=removed,
            files_added=int(metrics.get("numFilesAdded", 0)),
            bytes_removed=_total_size(metrics.get("filesRemoved")),
            bytes_added=_total_size(metrics.get("filesAdded")),
            version=_committed_version(table, read_version, "OPTIMIZE") if removed else None,
        )


def _checkpoint(table: DeltaTable, uri: str) -> CheckpointResult:
    with _translated(uri, "checkpoint"):
        table.update_incremental()
        table.create_checkpoint()
        table.cleanup_metadata()
        return CheckpointResult(version=table.version())


def _vacuum(table: DeltaTable, uri: str, retention_hours: int) -> VacuumResult:
    with _translated(uri, "vacuum"):
        table.update_incremental()
        updated = _align_retention(table, retention_hours)
        # Full mode also finds files no commit references (a writer that lost a race leaves its
        # new files behind, and tombstones older than the retention drop out of checkpoints);
        # its age check spares files written less than retention_hours ago.
        candidates = table.vacuum(retention_hours=retention_hours, dry_run=True, full=True)
        nested = [path for path in candidates if "/_delta_log/" in f"/{path}"]
        if nested:
            raise NestedTableError(
                f"{uri}: another Delta table is stored inside this table's directory "
                f"({nested[0]}); vacuum would delete its files, so it did not run. Move that "
                "table out of this one's directory"
            )
        deleted = (
            table.vacuum(retention_hours=retention_hours, dry_run=False, full=True)
            if candidates
            else []
        )
        return VacuumResult(
            retention_hours=retention_hours, files_deleted=len(deleted), retention_updated=updated
        )


def _align_retention(table: DeltaTable, retention_hours: int) -> bool:
    """Make the table keep tombstones exactly as long as vacuum waits; True if it changed.

    Shorter, and checkpoints would forget files vacuum has not deleted yet; longer, and delta-rs
    refuses the vacuum. Also tells other engines (Spark, DuckDB) the same retention.
    """
    current = table.metadata().configuration.get(RETENTION_PROPERTY)
    wanted = f"interval {retention_hours} hours"
    if current == wanted or (current is None and retention_hours == DEFAULT_RETENTION_HOURS):
        return False
    table.alter.set_table_properties({RETENTION_PROPERTY: wanted})
    table.update_incremental()
    return True


def _file_sizes(table: DeltaTable) -> list[int]:
    actions = pa.table(table.get_add_actions(flatten=True))
    return [int(size) for size in actions.column("size_bytes").to_pylist()]


def _total_size(summary: Any) -> int:
    # delta-rs reports filesAdded/filesRemoved as a JSON object in a string.
    if isinstance(summary, str):
        summary = json.loads(summary)
    return int(summary.get("totalSize", 0)) if isinstance(summary, dict) else 0


def _committed_version(table: DeltaTable, read_version: int, operation: str) -> int | None:
    """The version of the newest `operation` commit after read_version (others may follow it)."""
    newer = table.version() - read_version
    for entry in table.history(limit=max(newer, 1)):
        if entry.get("operation") == operation and int(entry["version"]) > read_version:
            return int(entry["version"])
    return None
