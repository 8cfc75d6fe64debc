"""Activity names, inputs and results, plus signature-only stubs registered under the same names.

Workflows call activities by these names; workflow tests register the stubs' names with mock
implementations. Each stub has exactly one real implementation in `activities/` (a test checks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from temporalio import activity

from lakeward.spec import PipelineSpec

__all__ = [
    "APPLY_BATCH",
    "CAPTURE_CHANGES",
    "STUBS",
    "ApplyBatchInput",
    "ApplyBatchResult",
    "CaptureChangesInput",
    "CaptureChangesResult",
]

CAPTURE_CHANGES = "capture_changes"
APPLY_BATCH = "apply_batch"


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


@dataclass
class ApplyBatchResult:
    records: int = 0
    applied: int = 0
    dead_letters: int = 0
    skipped_already_applied: int = 0
    delta_version: int | None = None
    offsets: dict[str, int] = field(default_factory=dict)
    max_source_ts_ms: int = 0


@activity.defn(name=CAPTURE_CHANGES)
async def capture_changes(input: CaptureChangesInput) -> CaptureChangesResult:
    raise NotImplementedError("signature only; the worker registers activities.capture")


@activity.defn(name=APPLY_BATCH)
def apply_batch(input: ApplyBatchInput) -> ApplyBatchResult:
    raise NotImplementedError("signature only; the worker registers activities.apply")


STUBS = [capture_changes, apply_batch]
