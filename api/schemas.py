"""Request and response bodies of the API (the OpenAPI document is generated from these)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from api.retrying import RetryingActivity

# The status body extends the workflow's own shapes, so a field the workflow adds shows up here
# (and in the OpenAPI document) with no second definition to keep in step.
from workflows.contracts import (  # noqa: F401 (names the inherited annotations resolve to)
    LifecycleState,
    PipelineStatus,
    ReconcileSummary,
    TableProgress,
)
from workflows.spec import PipelineSpec, ReconcileMode

__all__ = [
    "FieldError",
    "PipelineList",
    "PipelineStatusBody",
    "PipelineSummary",
    "ProblemDetails",
    "ReconcileAccepted",
    "ReconcileRequest",
    "ReconciliationDetail",
    "ReconciliationList",
    "ReconciliationSummary",
    "ReconfigureResult",
    "SignalAccepted",
    "SnapshotAccepted",
    "SnapshotRequest",
    "TableStatus",
]


class FieldError(BaseModel):
    field: str = Field(description="Dotted path of the field, e.g. `source.uri`.")
    message: str


class ProblemDetails(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = Field(None, description="Field-level errors (422 only).")
    request_id: str | None = Field(None, description="500 only: find it in the API's log.")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "about:blank",
                    "title": "Pipeline not found",
                    "status": 404,
                    "detail": "no pipeline named 'orders'",
                }
            ]
        }
    )


@dataclass
class TableStatus(TableProgress):
    #: Freshness: 0 when the table has no backlog, else seconds since the source time of the
    #: last applied change (the API's clock); None while a backlog waits and nothing is applied.
    lag_seconds: float | None = None


@dataclass
class PipelineStatusBody(PipelineStatus):
    """`GET /v1/pipelines/{name}`: `name`, `state` and `tables` are the stable contract."""

    progress: dict[str, TableStatus]  # type: ignore[assignment]
    #: Activities Temporal is retrying now, with their last error (a full disk, a store down):
    #: `last_error` only shows failures Temporal gave up on.
    retrying: list[RetryingActivity] = field(default_factory=list)


class PipelineSummary(BaseModel):
    name: str | None
    state: str | None
    source: str | None = Field(None, description="The capture strategy.")
    workflow_id: str


class PipelineList(BaseModel):
    pipelines: list[PipelineSummary]


class SignalAccepted(BaseModel):
    name: str
    signal: str
    accepted: bool = True


class SnapshotRequest(BaseModel):
    """Body of `:snapshot` (optional)."""

    model_config = ConfigDict(extra="forbid")
    collections: list[str] = Field(
        default_factory=list,
        description="Collections to copy again; empty: every collection the pipeline captures.",
    )


class SnapshotAccepted(BaseModel):
    name: str
    collections: list[str]
    accepted: bool = True


class ReconcileRequest(BaseModel):
    """Body of `:reconcile` (optional); unset fields take the spec's `reconcile` section."""

    model_config = ConfigDict(extra="forbid")
    collections: list[str] = Field(
        default_factory=list, description="Collections to compare; empty: all of them."
    )
    repair: bool | None = Field(None, description="Repair differences; unset: reconcile.repair.")
    mode: ReconcileMode | None = Field(None, description="fast or deep; unset: reconcile.mode.")


class ReconcileAccepted(BaseModel):
    name: str
    id: str = Field(description="GET /v1/pipelines/{name}/reconciliations/{id} follows it.")
    collections: list[str]


class ReconciliationSummary(BaseModel):
    id: str
    status: str = Field(description="RUNNING, COMPLETED, FAILED, TERMINATED, ... (Temporal's).")
    started_at: dt.datetime | None = None
    closed_at: dt.datetime | None = None


class ReconciliationList(BaseModel):
    reconciliations: list[ReconciliationSummary]


class ReconciliationDetail(ReconciliationSummary):
    progress: Any = Field(None, description="While running: the workflow's `progress` query.")
    result: Any = Field(None, description="Once completed: the workflow's result.")
    failure: str | None = Field(None, description="Once failed: why.")


class ReconfigureResult(BaseModel):
    name: str
    changed: list[str] = Field(
        description='Dotted paths that changed, e.g. "batching.max_records".'
    )
    added: list[str] = Field(description="Collections added (snapshotted unless mode is never).")
    removed: list[str] = Field(description="Collections no longer applied (their tables stay).")
    spec: PipelineSpec
