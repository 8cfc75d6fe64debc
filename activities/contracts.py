"""Activity names, inputs and results, plus signature-only stubs registered under the same names.

Workflows call activities by these names; workflow tests register the stubs' names with mock
implementations. Each stub has exactly one real implementation in `activities/` (a test checks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from temporalio import activity

from workflows.contracts import ReconcileDifference, ReconcileReport
from workflows.spec import PipelineSpec

__all__ = [
    "APPLY_BATCH",
    "APPLY_DEAD_LETTERS",
    "CAPTURE_CHANGES",
    "COPY_SNAPSHOT_RANGE",
    "DISCOVER_COLLECTIONS",
    "FIND_RECONCILE_CANDIDATES",
    "HASH_LAKE_RANGE",
    "HASH_SOURCE_RANGE",
    "MAINTAIN_TABLE",
    "PLAN_RECONCILE",
    "PLAN_SNAPSHOT",
    "RELEASE_CAPTURE",
    "REPAIR_RECONCILE_KEYS",
    "RESET_CAPTURE",
    "STUBS",
    "SYNC_SCHEDULE",
    "VERIFY_RECONCILE_KEYS",
    "WRITE_RECONCILE_REPORT",
    "ApplyBatchInput",
    "ApplyBatchResult",
    "ApplyDeadLettersInput",
    "ApplyDeadLettersResult",
    "CaptureChangesInput",
    "CaptureChangesResult",
    "CopySnapshotRangeInput",
    "CopySnapshotRangeResult",
    "DiscoverCollectionsInput",
    "DiscoverCollectionsResult",
    "FindCandidatesInput",
    "FindCandidatesResult",
    "HashRangeInput",
    "HashRangeResult",
    "MaintainTableInput",
    "MaintainTableResult",
    "PlanReconcileInput",
    "PlanReconcileResult",
    "PlanSnapshotInput",
    "PlanSnapshotResult",
    "ReconcileKey",
    "ReconcileLeaf",
    "ReconcileRange",
    "ReleaseCaptureInput",
    "ReleaseCaptureResult",
    "RepairKeysInput",
    "RepairKeysResult",
    "ResetCaptureInput",
    "ResetCaptureResult",
    "SnapshotRange",
    "SyncScheduleInput",
    "SyncScheduleResult",
    "VerifyKeysInput",
    "VerifyKeysResult",
    "WriteReportInput",
    "WriteReportResult",
]

CAPTURE_CHANGES = "capture_changes"
APPLY_BATCH = "apply_batch"
APPLY_DEAD_LETTERS = "apply_dead_letters"
PLAN_SNAPSHOT = "plan_snapshot"
RELEASE_CAPTURE = "release_capture"
RESET_CAPTURE = "reset_capture"
COPY_SNAPSHOT_RANGE = "copy_snapshot_range"
MAINTAIN_TABLE = "maintain_table"
SYNC_SCHEDULE = "sync_schedule"
DISCOVER_COLLECTIONS = "discover_collections"
PLAN_RECONCILE = "plan_reconcile"
HASH_SOURCE_RANGE = "hash_source_range"
HASH_LAKE_RANGE = "hash_lake_range"
FIND_RECONCILE_CANDIDATES = "find_reconcile_candidates"
VERIFY_RECONCILE_KEYS = "verify_reconcile_keys"
REPAIR_RECONCILE_KEYS = "repair_reconcile_keys"
WRITE_RECONCILE_REPORT = "write_reconcile_report"


@dataclass
class CaptureChangesInput:
    spec: PipelineSpec
    #: Epoch seconds to start from when no checkpoint exists yet (the pipeline's creation).
    start_at: float = 0.0


@dataclass
class CaptureChangesResult:
    events: int = 0
    batches: int = 0


@dataclass
class ApplyBatchInput:
    spec: PipelineSpec
    collection: str
    #: How long an empty batch waits for its first record before returning.
    idle_s: float = 5.0
    #: While snapshot rows may still arrive, deletes leave tombstones (see lakeward.apply).
    keep_tombstones: bool = False
    #: Once every snapshot row is applied: remove the tombstones after this batch.
    purge_tombstones: bool = False
    #: With purge_tombstones, after a snapshot: also remove rows older than this seq (the
    #: snapshot's earliest read point), documents that no longer exist. "" removes none.
    sweep_before_seq: str = ""


@dataclass
class ApplyBatchResult:
    records: int = 0
    applied: int = 0
    dead_letters: int = 0
    skipped_already_applied: int = 0
    delta_version: int | None = None
    offsets: dict[str, int] = field(default_factory=dict)
    max_source_ts_ms: int = 0
    tombstones_purged: int = 0
    rows_swept: int = 0
    schema_changes: int = 0
    #: Dead letters of this batch by reason (not_json, schema_conflict, oversize, ...).
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    coerced: int = 0
    kept_as_json: int = 0
    #: Records still waiting in the topic, and the batch size the next batch will use.
    backlog: int = 0
    batch_size: int = 0


@dataclass
class ApplyDeadLettersInput:
    """Move capture's dead letters of this pipeline (changes too large to publish) into its
    dead-letter table."""

    spec: PipelineSpec
    #: How long an empty batch waits for its first record (0: answer at once).
    idle_s: float = 0.0


@dataclass
class ApplyDeadLettersResult:
    records: int = 0
    dead_letters: int = 0
    offsets: dict[str, int] = field(default_factory=dict)


@dataclass
class ReleaseCaptureInput:
    """Undo what capture set up outside Lakeward when a pipeline stops (a Debezium connector)."""

    spec: PipelineSpec


@dataclass
class ReleaseCaptureResult:
    released: bool = False


@dataclass
class ResetCaptureInput:
    """Forget the capture's checkpoint, so it starts over at its start point (a re-sync after
    the resume point was lost from the oplog)."""

    spec: PipelineSpec


@dataclass
class ResetCaptureResult:
    reset: bool = False


@dataclass
class SnapshotRange:
    """`lower <= _id < upper` in index order; bounds as Extended JSON (None: unbounded)."""

    index: int
    lower: str | None = None
    upper: str | None = None


@dataclass
class PlanSnapshotInput:
    spec: PipelineSpec
    collection: str


@dataclass
class PlanSnapshotResult:
    ranges: list[SnapshotRange] = field(default_factory=list)


@dataclass
class CopySnapshotRangeInput:
    spec: PipelineSpec
    collection: str
    range: SnapshotRange
    #: Ranges the snapshot planned (for the progress metric; 0 from older workflow code).
    ranges: int = 0


@dataclass
class CopySnapshotRangeResult:
    documents: int = 0
    #: partition (as a string) -> highest offset the copy wrote
    offsets: dict[str, int] = field(default_factory=dict)
    #: The seq of the copy's rows (its read point)
    seq: str = ""


@dataclass
class MaintainTableInput:
    """Compact, checkpoint and vacuum one table of the pipeline, as `spec.maintenance` says
    (docs/maintenance.md). Never purges tombstones: apply_batch does, after a snapshot."""

    spec: PipelineSpec
    #: The collection whose current-state table is maintained (ignored with dead_letters).
    collection: str
    #: Maintain the pipeline's dead-letter table instead.
    dead_letters: bool = False
    #: Maintain the collection's change-log table instead of its current-state table.
    change_log: bool = False


@dataclass
class MaintainTableResult:
    table_uri: str = ""
    #: No table there yet (nothing applied): nothing was done.
    skipped: bool = False
    #: Whether compaction ran (at least min_files_to_compact files were below the target).
    compacted: bool = False
    files_before: int = 0
    files_after: int = 0
    files_removed: int = 0
    files_added: int = 0
    bytes_removed: int = 0
    bytes_added: int = 0
    #: The version compaction committed (None: nothing rewritten).
    compaction_version: int | None = None
    checkpoint_version: int | None = None
    #: Data files vacuum deleted (removed or unreferenced for longer than the retention).
    files_vacuumed: int = 0
    #: Whether the table's delta.deletedFileRetentionDuration was set to the spec's retention.
    retention_updated: bool = False


@dataclass
class SyncScheduleInput:
    """Make the pipeline's reconciliation Schedule (id `reconcile:<name>`) match its spec:
    created or updated when `spec.reconcile.schedule` is set, deleted when it is empty or the
    pipeline stops (`delete`)."""

    spec: PipelineSpec
    #: Where the scheduled ReconcileWorkflow runs (the pipeline's own workflow task queue).
    task_queue: str
    io_task_queue: str = "lakeward-io"
    cpu_task_queue: str = "lakeward-cpu"
    delete: bool = False


@dataclass
class SyncScheduleResult:
    schedule_id: str
    #: "created", "updated", "deleted" or "absent" (nothing to delete).
    action: str


@dataclass
class DiscoverCollectionsInput:
    """A pipeline with no collection list replicates every collection of its database."""

    spec: PipelineSpec


@dataclass
class DiscoverCollectionsResult:
    #: The database's collections, sorted (views and system collections left out).
    collections: list[str] = field(default_factory=list)


@activity.defn(name=CAPTURE_CHANGES)
async def capture_changes(input: CaptureChangesInput) -> CaptureChangesResult:
    raise NotImplementedError("signature only; the worker registers activities.capture")


@activity.defn(name=APPLY_BATCH)
def apply_batch(input: ApplyBatchInput) -> ApplyBatchResult:
    raise NotImplementedError("signature only; the worker registers activities.apply")


@activity.defn(name=APPLY_DEAD_LETTERS)
def apply_dead_letters(input: ApplyDeadLettersInput) -> ApplyDeadLettersResult:
    raise NotImplementedError("signature only; the worker registers activities.pipeline")


@activity.defn(name=PLAN_SNAPSHOT)
async def plan_snapshot(input: PlanSnapshotInput) -> PlanSnapshotResult:
    raise NotImplementedError("signature only; the worker registers activities.snapshot")


@activity.defn(name=COPY_SNAPSHOT_RANGE)
async def copy_snapshot_range(input: CopySnapshotRangeInput) -> CopySnapshotRangeResult:
    raise NotImplementedError("signature only; the worker registers activities.snapshot")


@activity.defn(name=RELEASE_CAPTURE)
async def release_capture(input: ReleaseCaptureInput) -> ReleaseCaptureResult:
    raise NotImplementedError("signature only; the worker registers activities.pipeline")


@activity.defn(name=RESET_CAPTURE)
async def reset_capture(input: ResetCaptureInput) -> ResetCaptureResult:
    raise NotImplementedError("signature only; the worker registers activities.pipeline")


@activity.defn(name=MAINTAIN_TABLE)
def maintain_table(input: MaintainTableInput) -> MaintainTableResult:
    raise NotImplementedError("signature only; the worker registers activities.maintenance")


@activity.defn(name=DISCOVER_COLLECTIONS)
def discover_collections(input: DiscoverCollectionsInput) -> DiscoverCollectionsResult:
    raise NotImplementedError("signature only; the worker registers activities.discovery")


@activity.defn(name=SYNC_SCHEDULE)
async def sync_schedule(input: SyncScheduleInput) -> SyncScheduleResult:
    raise NotImplementedError("signature only; the worker registers activities.schedules")


@dataclass
class ReconcileRange:
    """Consecutive leaves of a reconciliation: the first starts at `lower`, leaf i ends at
    `uppers[i]` (Extended JSON bounds in `_id` index order; None: unbounded)."""

    index: int
    lower: str | None = None
    uppers: list[str | None] = field(default_factory=list)


@dataclass
class ReconcileLeaf:
    """One leaf: `lower <= _id < upper` (Extended JSON bounds; None: unbounded)."""

    lower: str | None = None
    upper: str | None = None


@dataclass
class ReconcileKey:
    """A canonical `_id` (lakeward.events.canonical_key), as the table's `_id`, `_id_type`."""

    key: str
    key_type: str


@dataclass
class PlanReconcileInput:
    spec: PipelineSpec
    collection: str
    #: "fast" or "deep"
    mode: str = "fast"


@dataclass
class PlanReconcileResult:
    table_uri: str = ""
    #: The table version the lake side is pinned to (None: no table yet).
    version: int | None = None
    #: What the lake side hashes from: "fast" only if the table has a `_hash` column.
    mode: str = "deep"
    ranges: list[ReconcileRange] = field(default_factory=list)
    leaves: int = 0
    estimated_documents: int = 0


@dataclass
class HashRangeInput:
    """Hash one side of one range (hash_source_range, hash_lake_range)."""

    spec: PipelineSpec
    collection: str
    version: int | None
    range: ReconcileRange
    mode: str = "deep"


@dataclass
class HashRangeResult:
    #: Per leaf of the range: xxh3-128 (hex) over (key, document hash) in key order, and count.
    hashes: list[str] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    documents: int = 0


@dataclass
class FindCandidatesInput:
    """List the keys that differ under mismatching leaves (at the pinned version)."""

    spec: PipelineSpec
    collection: str
    version: int | None
    leaves: list[ReconcileLeaf] = field(default_factory=list)
    #: At most this many keys come back (workflow history carries them to verify and repair).
    limit: int = 20_000
    #: The mode the ranges were hashed in (plan_reconcile's): "fast" compares raw hashes.
    mode: str = "deep"


@dataclass
class FindCandidatesResult:
    #: The first `limit` differing keys in key order (the rest are only counted in `total`).
    keys: list[ReconcileKey] = field(default_factory=list)
    documents: int = 0
    total: int = 0


@dataclass
class VerifyKeysInput:
    """Compare keys again once the pipeline has applied past the source read."""

    spec: PipelineSpec
    collection: str
    keys: list[ReconcileKey] = field(default_factory=list)
    #: At most this many differences come back with their field-level detail.
    limit: int = 1000


@dataclass
class VerifyKeysResult:
    differences: list[ReconcileDifference] = field(default_factory=list)
    missing: int = 0
    extra: int = 0
    changed: int = 0
    #: Every key that differs (for repair), in key order.
    keys: list[ReconcileKey] = field(default_factory=list)
    unsettled: int = 0
    settled: bool = True


@dataclass
class RepairKeysInput:
    """Re-emit the source state of these keys through the collection's topic."""

    spec: PipelineSpec
    collection: str
    keys: list[ReconcileKey] = field(default_factory=list)


@dataclass
class RepairKeysResult:
    published: int = 0


@dataclass
class WriteReportInput:
    spec: PipelineSpec
    report: ReconcileReport


@dataclass
class WriteReportResult:
    table_uri: str = ""
    version: int | None = None


@activity.defn(name=PLAN_RECONCILE)
async def plan_reconcile(input: PlanReconcileInput) -> PlanReconcileResult:
    raise NotImplementedError("signature only; the worker registers activities.reconcile")


@activity.defn(name=HASH_SOURCE_RANGE)
async def hash_source_range(input: HashRangeInput) -> HashRangeResult:
    raise NotImplementedError("signature only; the worker registers activities.reconcile")


@activity.defn(name=HASH_LAKE_RANGE)
def hash_lake_range(input: HashRangeInput) -> HashRangeResult:
    raise NotImplementedError("signature only; the worker registers activities.reconcile")


@activity.defn(name=FIND_RECONCILE_CANDIDATES)
async def find_reconcile_candidates(input: FindCandidatesInput) -> FindCandidatesResult:
    raise NotImplementedError("signature only; the worker registers activities.reconcile")


@activity.defn(name=VERIFY_RECONCILE_KEYS)
async def verify_reconcile_keys(input: VerifyKeysInput) -> VerifyKeysResult:
    raise NotImplementedError("signature only; the worker registers activities.reconcile")


@activity.defn(name=REPAIR_RECONCILE_KEYS)
async def repair_reconcile_keys(input: RepairKeysInput) -> RepairKeysResult:
    raise NotImplementedError("signature only; the worker registers activities.reconcile")


@activity.defn(name=WRITE_RECONCILE_REPORT)
def write_reconcile_report(input: WriteReportInput) -> WriteReportResult:
    raise NotImplementedError("signature only; the worker registers activities.reconcile")


STUBS = [
    capture_changes,
    apply_batch,
    apply_dead_letters,
    plan_snapshot,
    copy_snapshot_range,
    release_capture,
    reset_capture,
    maintain_table,
    sync_schedule,
    discover_collections,
    plan_reconcile,
    hash_source_range,
    hash_lake_range,
    find_reconcile_candidates,
    verify_reconcile_keys,
    repair_reconcile_keys,
    write_reconcile_report,
]
