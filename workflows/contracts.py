"""Workflow inputs, results and the pipeline's whole state: shapes every layer may import.

Only small summaries live here (counts, offsets, versions); events never travel through
workflow history. New fields get defaults so old histories still decode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from temporalio.contrib.pydantic import pydantic_data_converter

from workflows.spec import PipelineSpec

__all__ = [
    "DATA_CONVERTER",
    "PIPELINE_WORKFLOW",
    "SNAPSHOT_WORKFLOW",
    "LifecycleState",
    "PipelineState",
    "PipelineStatus",
    "SnapshotCollectionInput",
    "SnapshotCollectionResult",
    "StartPipelineInput",
    "TableProgress",
]

PIPELINE_WORKFLOW = "PipelineWorkflow"
SNAPSHOT_WORKFLOW = "SnapshotWorkflow"
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
class PipelineState:
    """The pipeline entity's whole state, carried across continue-as-new."""

    spec: PipelineSpec
    state: LifecycleState = LifecycleState.CREATED
    tables: dict[str, TableProgress] = field(default_factory=dict)
    last_error: str | None = None
    runs: int = 1
    topic_prefix: str = "lakeward"
    io_task_queue: str = "lakeward-io"
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


@dataclass
class StartPipelineInput:
    spec: PipelineSpec
    topic_prefix: str = "lakeward"
    #: Task queue of the capture and apply activities (the I/O bulkhead).
    io_task_queue: str = "lakeward-io"
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
