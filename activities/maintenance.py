"""Table maintenance activity: compact, checkpoint and vacuum one of a pipeline's Delta tables."""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.contracts import MAINTAIN_TABLE, MaintainTableInput, MaintainTableResult
from activities.credentials import secret_failure
from activities.resilience import guarded
from lakeward.delta.maintenance import (
    MaintenanceConflictError,
    MaintenanceError,
    MaintenanceResult,
    NestedTableError,
    maintain,
)
from lakeward.delta.storage import storage_options
from lakeward.resilience import Dependency
from lakeward.secrets import SecretReferenceError
from lakeward.settings import Settings

__all__ = ["MaintenanceActivities"]


class MaintenanceActivities:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @activity.defn(name=MAINTAIN_TABLE)
    def maintain_table(self, input: MaintainTableInput) -> MaintainTableResult:
        """Sync: delta-rs blocks, so this runs in the worker's I/O thread pool like apply_batch.

        Compaction can take minutes on a large backlog; the activity heartbeats between steps.
        Every step is idempotent, so a retry simply runs the whole maintenance again.
        """
        spec = input.spec
        uri = _table_uri(input)
        try:
            options = storage_options(spec.sink, self.settings)
        except SecretReferenceError as exc:
            raise secret_failure(exc) from None

        def heartbeat(step: str) -> None:
            activity.heartbeat({"table": uri, "step": step})

        try:
            with guarded(Dependency.OBJECT_STORE):
                done = maintain(uri, options, spec.maintenance, on_step=heartbeat)
        except MaintenanceConflictError as exc:
            # An apply commit won the race; the table is unchanged and a later attempt succeeds.
            raise ApplicationError(str(exc), type="MaintenanceConflict") from exc
        except NestedTableError as exc:
            raise ApplicationError(str(exc), type="NestedTable", non_retryable=True) from exc
        except MaintenanceError as exc:
            raise ApplicationError(str(exc), type="MaintenanceFailed") from exc
        return _result(done)


def _result(done: MaintenanceResult) -> MaintainTableResult:
    compaction, checkpoint, vacuum = done.compaction, done.checkpoint, done.vacuum
    if compaction is None or checkpoint is None or vacuum is None:
        return MaintainTableResult(table_uri=done.uri, skipped=True)
    return MaintainTableResult(
        table_uri=done.uri,
        compacted=compaction.ran,
        files_before=compaction.files_before,
        files_after=compaction.files_after,
        files_removed=compaction.files_removed,
        files_added=compaction.files_added,
        bytes_removed=compaction.bytes_removed,
        bytes_added=compaction.bytes_added,
        compaction_version=compaction.version,
        checkpoint_version=checkpoint.version,
        files_vacuumed=vacuum.files_deleted,
        retention_updated=vacuum.retention_updated,
    )


def _table_uri(input: MaintainTableInput) -> str:
    spec = input.spec
    if input.dead_letters:
        return spec.sink.dead_letters_uri()
    tables = spec.tables()
    name = f"{spec.source.database}.{input.collection}"
    if name not in tables:
        raise ApplicationError(
            f"pipeline {spec.name!r} does not replicate {name!r} (it replicates "
            f"{', '.join(sorted(tables))}); maintain one of those, or dead_letters=True",
            type="UnknownCollection",
            non_retryable=True,
        )
    if input.change_log:
        return spec.sink.change_log_uri(spec.source.database, input.collection)
    return tables[name]
