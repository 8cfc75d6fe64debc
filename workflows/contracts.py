"""Workflow inputs, results and the pipeline's whole state: shapes every layer may import.

Only small summaries live here (counts, offsets, versions); events never travel through
workflow history. New fields get defaults so old histories still decode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter

from workflows.spec import PipelineSpec

__all__ = [
    "DATA_CONVERTER",
    "PIPELINE_KEY",
    "PIPELINE_WORKFLOW",
    "RECONCILE_WORKFLOW",
    "SNAPSHOT_WORKFLOW",
    "SOURCE_KEY",
    "STATE_KEY",
    "LifecycleState",
    "PipelineState",
    "PipelineStatus",
    "ReconcileDifference",
    "ReconcileFieldDiff",
    "ReconcileInput",
    "ReconcileProgress",
    "ReconcileReport",
    "ReconcileSummary",
    "ReconfigurePipelineInput",
    "ReconfigurePipelineResult",
    "SnapshotCollectionInput",
    "SnapshotCollectionResult",
    "StartPipelineInput",
    "StartReconcileInput",
    "StartReconcileResult",
    "TableProgress",
]

PIPELINE_WORKFLOW = "PipelineWorkflow"
SNAPSHOT_WORKFLOW = "SnapshotWorkflow"
RECONCILE_WORKFLOW = "ReconcileWorkflow"
#: Custom search attributes: the API and the Web UI list and filter by them. Pipelines carry all
#: three; reconciliation runs carry the pipeline's name.
PIPELINE_KEY = SearchAttributeKey.for_keyword("LakewardPipeline")
STATE_KEY = SearchAttributeKey.for_keyword("LakewardState")
SOURCE_KEY = SearchAttributeKey.for_keyword("LakewardSource")
#: How every client and worker encodes payloads (pydantic models and dataclasses).
DATA_CONVERTER = pydantic_data_converter


class LifecycleState(StrEnum):
    CREATED = "CREATED"
    SNAPSHOTTING = "SNAPSHOTTING"
    STREAMING = "STREAMING"
    PAUSED = "PAUSED"
    STOPPED = "STOPPED"
    FAILED = "FAILED"


@dataclass
class TableProgress:
    """Apply progress of one collection's table."""

    table: str  # "<db>.<collection>"
    uri: str
    topic: str
    #: partition (as a string: JSON object keys) -> last Kafka offset recorded in the Delta log
    offsets: dict[str, int] = field(default_factory=dict)
    delta_version: int | None = None
    applied: int = 0
    batches: int = 0
    dead_letters: int = 0
    last_source_ts_ms: int = 0
    #: "none", "running" (the snapshot copies), "applying" (copied; rows still being applied),
    #: "done" (tombstones purged)
    snapshot: str = "none"
    snapshot_documents: int = 0
    #: partition (as a string) -> highest offset of the snapshot's rows: once applied past it,
    #: deletes need no tombstones any more
    snapshot_horizon: dict[str, int] = field(default_factory=dict)
    #: The finished snapshot's earliest read point (a seq): once its rows are applied, rows
    #: older than it are documents that no longer exist and are removed ("" for none)
    snapshot_sweep_before: str = ""
    #: Snapshots started for this table (the initial one, re-syncs, on-demand re-snapshots)
    snapshots_started: int = 0
    #: Rows removed by sweeps after snapshots
    rows_swept: int = 0
    #: Schema changes committed (new columns or struct fields, widened types)
    schema_changes: int = 0
    #: Dead letters by reason (not_json, schema_conflict, oversize, ...)
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    #: Where the adaptive batch size stands, and the records waiting after the last batch
    batch_size: int = 0
    backlog: int = 0
    #: When the table was last compacted/checkpointed/vacuumed (workflow time, epoch seconds)
    maintained_at: float = 0.0
    maintenance_runs: int = 0


@dataclass
class ReconcileSummary:
    """How one reconciliation run ended; the `ReconcileWorkflow` signals it to its pipeline
    (`reconciled`), however it was started (on demand, by the pipeline's Schedule)."""

    id: str  # the ReconcileWorkflow's id
    #: "passed" (no difference), "differences" (some persisted), "repaired", "failed"
    outcome: str
    started_at: float = 0.0  # epoch seconds
    finished_at: float = 0.0
    documents: int = 0
    missing: int = 0  # in the source, not in the lake
    extra: int = 0  # in the lake, not in the source
    changed: int = 0
    repaired: int = 0
    error: str | None = None


@dataclass
class PipelineState:
    """The pipeline entity's whole state, carried across continue-as-new."""

    spec: PipelineSpec
    state: LifecycleState = LifecycleState.CREATED
    tables: dict[str, TableProgress] = field(default_factory=dict)
    last_error: str | None = None
    runs: int = 1
    topic_prefix: str = "lakeward"
    io_task_queue: str = "lakeward-io"
    cpu_task_queue: str = "lakeward-cpu"
    #: When the pipeline was created (epoch seconds); capture with no checkpoint starts here.
    created_at: float = 0.0
    #: Where capture starts after a re-sync (epoch seconds; 0: created_at).
    stream_start: float = 0.0
    #: Re-syncs after the resume point was lost from the oplog.
    resyncs: int = 0
    #: Changes capture could not publish (too large), moved to the dead-letter table.
    capture_dead_letters: int = 0
    #: When the dead-letter table was last maintained (workflow time, epoch seconds).
    dead_letters_maintained_at: float = 0.0
    #: The last maintenance run that failed (maintenance failing never stops the pipeline).
    last_maintenance_error: str | None = None
    #: The last reconciliation that ended, and how many were started through the pipeline.
    last_reconciliation: ReconcileSummary | None = None
    reconciliations_started: int = 0
    #: Reconfigurations applied (the `reconfigure` update).
    reconfigurations: int = 0
    #: The spec listed no collections: every collection of the database is replicated (the
    #: spec in this state lists the ones found so far; new ones are looked for periodically).
    all_collections: bool = False
    #: When the database's collections were last listed (workflow time, epoch seconds).
    discovered_at: float = 0.0


@dataclass
class StartPipelineInput:
    spec: PipelineSpec
    topic_prefix: str = "lakeward"
    #: Task queue of the capture and apply activities (the I/O bulkhead).
    io_task_queue: str = "lakeward-io"
    #: Task queue of CPU-heavy activities (reconciliation hashing).
    cpu_task_queue: str = "lakeward-cpu"
    #: Set only by continue-as-new.
    carried: PipelineState | None = None


@dataclass
class PipelineStatus:
    """What the `status` query returns and `GET /v1/pipelines/{name}` serves."""

    name: str
    state: LifecycleState
    tables: dict[str, str]
    progress: dict[str, TableProgress]
    last_error: str | None
    spec: PipelineSpec
    #: Changes capture could not publish (too large), now rows of the dead-letter table.
    capture_dead_letters: int = 0
    resyncs: int = 0
    last_reconciliation: ReconcileSummary | None = None
    last_maintenance_error: str | None = None
    reconfigurations: int = 0
    #: Apply batches running now. A pause stops new batches; the ones running (perhaps waiting
    #: for their first record) still commit what they read: PAUSED with none in flight means
    #: the tables stay as they are.
    batches_in_flight: int = 0


@dataclass
class ReconfigurePipelineInput:
    """The `reconfigure` update: the whole new spec (the API merges a PATCH into the current one).

    The validator rejects, before anything reaches history: another name, source or sink (those
    make another pipeline), removing every collection, and any change to a stopped or failed
    pipeline. Field rules (batch bounds, policies, the cron schedule) are the spec's own.
    """

    spec: PipelineSpec


@dataclass
class ReconfigurePipelineResult:
    #: Dotted paths of the settings that changed, e.g. "batching.max_records".
    changed: list[str] = field(default_factory=list)
    #: Collections added (they are snapshotted unless snapshot.mode is never) and removed
    #: (no longer applied; their tables stay).
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


@dataclass
class StartReconcileInput:
    """The `reconcile` update: start a reconciliation run now."""

    #: Collections to compare; empty: every collection the pipeline captures.
    collections: list[str] = field(default_factory=list)
    #: None: the spec's reconcile.repair.
    repair: bool | None = None
    #: "fast" or "deep"; "": the spec's reconcile.mode.
    mode: str = ""


@dataclass
class ReconcileInput:
    """Input of the `ReconcileWorkflow` (started by the pipeline's `reconcile` update or by its
    Temporal Schedule, id `reconcile:<pipeline>`)."""

    spec: PipelineSpec
    #: Collections to compare; empty: every collection of the spec.
    collections: list[str] = field(default_factory=list)
    #: "fast" or "deep"; "": the spec's reconcile.mode.
    mode: str = ""
    #: None: the spec's reconcile.repair.
    repair: bool | None = None
    io_task_queue: str = "lakeward-io"
    cpu_task_queue: str = "lakeward-cpu"
    #: "api" (on demand) or "schedule".
    trigger: str = "api"


@dataclass
class StartReconcileResult:
    id: str  # the ReconcileWorkflow's id: GET /v1/pipelines/{name}/reconciliations/{id}
    collections: list[str] = field(default_factory=list)


@dataclass
class SnapshotCollectionInput:
    """Copy one collection's existing documents (the `SnapshotWorkflow` child)."""

    spec: PipelineSpec
    collection: str
    io_task_queue: str = "lakeward-io"


@dataclass
class SnapshotCollectionResult:
    collection: str
    documents: int = 0
    ranges: int = 0
    #: partition (as a string) -> highest offset the snapshot wrote: the tombstone horizon
    offsets: dict[str, int] = field(default_factory=dict)
    #: The earliest seq of its rows (the earliest read point of its ranges): the sweep bound
    min_seq: str = ""


@dataclass
class ReconcileFieldDiff:
    """One field of a changed document: its path (`a.b`, `items.2.price`) and each side's
    value as canonical Extended JSON, shortened past 200 characters (None: field absent)."""

    path: str
    source: str | None = None
    lake: str | None = None


@dataclass
class ReconcileDifference:
    """A key whose document differs: `missing` in the lake, `extra` in the lake, or `changed`
    (with the fields that differ)."""

    collection: str
    key: str  # the canonical _id (lakeward.events.canonical_key), as the table's _id column
    key_type: str
    kind: str
    fields: list[ReconcileFieldDiff] = field(default_factory=list)


@dataclass
class ReconcileProgress:
    """The `progress` query of a running `ReconcileWorkflow`."""

    phase: str = "planning"  # planning, hashing, comparing, repairing, reporting, done
    percent: float = 0.0
    documents: int = 0  # source documents hashed so far
    ranges_done: int = 0
    ranges_total: int = 0
    eta_seconds: float | None = None
    collection: str = ""


@dataclass
class ReconcileReport:
    """What a `ReconcileWorkflow` returns (and writes to `_lakeward/reconciliations`)."""

    summary: ReconcileSummary
    pipeline: str = ""
    collections: list[str] = field(default_factory=list)
    mode: str = ""  # the mode asked for
    #: Collection -> the mode it was hashed in: "fast" runs deep where live rows lack `_hash`
    #: (applied before Lakeward wrote it) or capture is Debezium (docs/reconcile.md).
    effective_modes: dict[str, str] = field(default_factory=dict)
    trigger: str = ""
    ranges: int = 0
    leaves: int = 0
    mismatching_leaves: int = 0
    #: Keys that kept changing in every verification round (in flight): not differences.
    unsettled: int = 0
    #: False when the pipeline did not apply past the read time within the wait: differences
    #: are then relative to a lake that may be behind.
    settled: bool = True
    #: The first 1000 differences in key order per collection; `truncated` if there were more.
    differences: list[ReconcileDifference] = field(default_factory=list)
    truncated: bool = False
    report_table: str = ""
