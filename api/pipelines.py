"""`/v1/pipelines`: create, list, read, reconfigure, pause, resume, snapshot, reconcile, stop.

Each route reads or drives the pipeline's workflow (`pipeline:<name>`) through the Temporal
client: the status query, the pause/resume/stop signals, the reconfigure/resnapshot/reconcile
updates, and visibility (custom search attributes) for lists.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api.auth import require
from api.errors import Problem, field_errors
from api.retrying import retrying_activities
from api.schemas import (
    PipelineList,
    PipelineStatusBody,
    PipelineSummary,
    ReconcileAccepted,
    ReconcileRequest,
    ReconciliationDetail,
    ReconciliationList,
    ReconciliationSummary,
    ReconfigureResult,
    SignalAccepted,
    SnapshotAccepted,
    SnapshotRequest,
    TableStatus,
)
from api.sinks import check_lake_root
from lakeward.settings import Settings
from lakeward.tokens import Role
from workflows.contracts import (
    PIPELINE_WORKFLOW,
    RECONCILE_WORKFLOW,
    LifecycleState,
    PipelineState,
    PipelineStatus,
    ReconfigurePipelineInput,
    ReconfigurePipelineResult,
    StartPipelineInput,
    StartReconcileInput,
    StartReconcileResult,
    TableProgress,
)
from workflows.pipeline import PipelineWorkflow, search_attributes
from workflows.spec import PipelineSpec, is_valid_name

__all__ = ["lag_seconds", "merge_patch", "router"]

viewer = Depends(require(Role.viewer))
operator = Depends(require(Role.operator))
admin = Depends(require(Role.admin))

router = APIRouter(prefix="/v1/pipelines", tags=["pipelines"])

_EXAMPLE_SPEC = {
    "name": "orders",
    "source": {
        "uri": "env:MONGO_URI",
        "database": "shop",
        "collections": ["orders"],
        "capture": "change_stream",
    },
    "sink": {"uri": "./.lakeward/lake", "change_log": False},
}


def lag_seconds(table: TableProgress, now: float) -> float | None:
    """Freshness of a table: 0 with no backlog, else seconds since the last applied change's
    source time; None when a backlog waits and no change was applied yet."""
    if table.backlog == 0:
        return 0.0
    if table.last_source_ts_ms <= 0:
        return None
    return max(0.0, round(now - table.last_source_ts_ms / 1000, 3))


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 JSON merge patch: objects merge key by key, null removes, the rest replaces."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def _client(request: Request) -> Client:
    return request.app.state.client  # type: ignore[no-any-return]


def _not_found(name: str) -> Problem:
    return Problem(404, "Pipeline not found", f"no pipeline named {name!r}")


def _ended(name: str) -> Problem:
    return Problem(409, "Pipeline not running", f"pipeline {name!r} has ended")


def _handle(request: Request, name: str) -> WorkflowHandle[Any, Any]:
    if not is_valid_name(name):
        raise _not_found(name)
    return _client(request).get_workflow_handle(f"pipeline:{name}")


async def _status(request: Request, name: str) -> PipelineStatus:
    try:
        return await _handle(request, name).query(PipelineWorkflow.status)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise _not_found(name) from exc
        raise


def _body(status: PipelineStatus) -> PipelineStatusBody:
    now = time.time()
    fields = {f.name: getattr(status, f.name) for f in dataclasses.fields(status)}
    fields["progress"] = {
        table: TableStatus(**dataclasses.asdict(progress), lag_seconds=lag_seconds(progress, now))
        for table, progress in status.progress.items()
    }
    return PipelineStatusBody(**fields)


def _update_refused(title: str, exc: WorkflowUpdateFailedError) -> Problem:
    cause = exc.cause
    detail = getattr(cause, "message", None) or str(cause or exc)
    return Problem(422, title, detail)


def _is_ended(exc: RPCError) -> bool:
    return exc.status == RPCStatusCode.NOT_FOUND or "completed" in exc.message


async def _update(
    request: Request, name: str, update: Any, arg: Any, refused: str, result_type: Any = None
) -> Any:
    """Send a workflow update: its validator's refusal is a 422 titled `refused`, a pipeline
    that has ended a 409."""
    try:
        return await _handle(request, name).execute_update(update, arg, result_type=result_type)
    except WorkflowUpdateFailedError as exc:
        raise _update_refused(refused, exc) from exc
    except RPCError as exc:
        if _is_ended(exc):
            raise _ended(name) from exc
        raise


@router.post(
    "",
    status_code=201,
    response_model=PipelineStatusBody,
    responses={200: {"model": PipelineStatusBody, "description": "Already running, same spec."}},
    summary="Create and start a pipeline (idempotent by name)",
)
async def create_pipeline(
    spec: Annotated[
        PipelineSpec,
        Body(openapi_examples={"minimal": {"summary": "One collection", "value": _EXAMPLE_SPEC}}),
    ],
    request: Request,
    _: Any = operator,
) -> Any:
    """Start the pipeline's workflow. The same spec again answers 200 with its status; another
    spec under a running name is a 409."""
    request.state.audit_pipeline = spec.name
    settings = _settings(request)
    spec = spec.with_absolute_sink(Path.cwd())
    check_lake_root(spec, settings.lake_root)
    start = StartPipelineInput(
        spec=spec,
        topic_prefix=settings.topic_prefix,
        io_task_queue=settings.io_task_queue,
        cpu_task_queue=settings.cpu_task_queue,
    )
    try:
        await _client(request).start_workflow(
            PipelineWorkflow.run,
            start,
            id=spec.workflow_id,
            task_queue=settings.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            search_attributes=search_attributes(PipelineState(spec=spec)),
        )
    except WorkflowAlreadyStartedError:
        current = await _status(request, spec.name)
        if current.spec == spec:
            return JSONResponse(jsonable_encoder(_body(current)), status_code=200)
        raise Problem(
            409,
            "Pipeline already exists",
            f"pipeline {spec.name!r} is running with a different spec; "
            "PATCH it, stop it first, or choose another name",
        ) from None
    return _body(await _status(request, spec.name))


@router.get("", response_model=PipelineList, summary="List running pipelines")
async def list_pipelines(
    request: Request,
    state: Annotated[
        str | None, Query(description="Only pipelines in this state, e.g. STREAMING.")
    ] = None,
    _: Any = viewer,
) -> PipelineList:
    """Running pipelines from Temporal visibility (the custom search attributes)."""
    query = f"WorkflowType = '{PIPELINE_WORKFLOW}' AND ExecutionStatus = 'Running'"
    if state is not None:
        states = {s.value for s in LifecycleState}
        if state.upper() not in states:
            raise Problem(
                422, "Invalid filter", f"state must be one of {', '.join(sorted(states))}"
            )
        query += f" AND LakewardState = '{state.upper()}'"
    items = []
    async for wf in _client(request).list_workflows(query):
        if wf.status not in (WorkflowExecutionStatus.RUNNING, None):
            continue
        attrs = {k.name: v for k, v in wf.typed_search_attributes}  # type: ignore[attr-defined]
        items.append(
            PipelineSummary(
                name=attrs.get("LakewardPipeline"),
                state=attrs.get("LakewardState"),
                source=attrs.get("LakewardSource"),
                workflow_id=wf.id,
            )
        )
    return PipelineList(pipelines=items)


@router.get("/{name}", response_model=PipelineStatusBody, summary="A pipeline's status")
async def get_pipeline(name: str, request: Request, _: Any = viewer) -> PipelineStatusBody:
    """State, tables (`"<db>.<collection>"` -> Delta table URI), per-table progress with
    freshness (`lag_seconds`), the last error, the activities retrying now and the spec."""
    body = _body(await _status(request, name))
    body.retrying = await retrying_activities(_client(request), f"pipeline:{name}")
    return body


@router.patch(
    "/{name}",
    response_model=ReconfigureResult,
    summary="Reconfigure a running pipeline (JSON merge patch of its spec)",
)
async def reconfigure_pipeline(
    name: str,
    request: Request,
    patch: Annotated[
        dict[str, Any],
        Body(
            media_type="application/merge-patch+json",
            description="RFC 7396: the fields to change; null removes a field (its default "
            "applies).",
            openapi_examples={
                "batching": {
                    "summary": "Larger batches",
                    "value": {"batching": {"max_records": 5000}},
                },
                "add a collection": {
                    "value": {"source": {"collections": ["orders", "payments"]}},
                },
            },
        ),
    ],
    _: Any = admin,
) -> ReconfigureResult:
    """Merge the patch into the current spec, validate the result as a whole spec, and send it
    to the workflow's `reconfigure` update, whose validator refuses changes a running pipeline
    cannot take (another name, source or sink; no collection left; a stopped pipeline)."""
    current = await _status(request, name)
    merged = merge_patch(current.spec.model_dump(mode="json"), patch)
    try:
        spec = PipelineSpec.model_validate(merged).with_absolute_sink(Path.cwd())
    except ValidationError as exc:
        errors = field_errors(list(exc.errors()))
        detail = "; ".join(f"{e['field'] or 'spec'}: {e['message']}" for e in errors)
        raise Problem(422, "Invalid pipeline spec", detail, errors=errors) from None
    result = await _update(
        request,
        name,
        "reconfigure",
        ReconfigurePipelineInput(spec=spec),
        "Reconfiguration refused",
        ReconfigurePipelineResult,
    )
    return ReconfigureResult(
        name=name, changed=result.changed, added=result.added, removed=result.removed, spec=spec
    )


@router.delete("/{name}", status_code=202, response_model=SignalAccepted, summary="Stop a pipeline")
async def stop_pipeline(name: str, request: Request, _: Any = admin) -> SignalAccepted:
    """The batch in flight commits, capture ends, the pipeline becomes STOPPED (its tables
    stay)."""
    return await _signal(request, name, "stop")


async def _signal(request: Request, name: str, signal: str) -> SignalAccepted:
    await _status(request, name)  # 404 for unknown names
    try:
        await _handle(request, name).signal(signal)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise _ended(name) from exc
        raise
    return SignalAccepted(name=name, signal=signal)


@router.post(
    "/{name}:pause", status_code=202, response_model=SignalAccepted, summary="Pause a pipeline"
)
async def pause_pipeline(name: str, request: Request, _: Any = operator) -> SignalAccepted:
    """No new micro-batch starts once the one in flight commits; capture keeps filling Kafka.
    A second pause is harmless."""
    return await _signal(request, name, "pause")


@router.post(
    "/{name}:resume", status_code=202, response_model=SignalAccepted, summary="Resume a pipeline"
)
async def resume_pipeline(name: str, request: Request, _: Any = operator) -> SignalAccepted:
    """Apply continues from the offsets recorded in the Delta log."""
    return await _signal(request, name, "resume")


async def _resnapshot(request: Request, name: str, body: SnapshotRequest | None) -> Any:
    await _status(request, name)  # 404 for unknown names
    collections = body.collections if body else []
    accepted = await _update(
        request, name, PipelineWorkflow.resnapshot, collections, "Snapshot refused"
    )
    return SnapshotAccepted(name=name, collections=accepted)


@router.post(
    "/{name}:snapshot",
    status_code=202,
    response_model=SnapshotAccepted,
    summary="Copy collections again (re-sync)",
)
async def snapshot_pipeline(
    name: str, request: Request, body: SnapshotRequest | None = None, _: Any = operator
) -> Any:
    """Copy the named collections (all the pipeline captures when none are named) again; once a
    copy's rows are applied, rows of documents that no longer exist are removed."""
    return await _resnapshot(request, name, body)


@router.post(
    "/{name}:resnapshot",
    status_code=202,
    response_model=SnapshotAccepted,
    deprecated=True,
    summary="Deprecated alias of :snapshot",
)
async def resnapshot_pipeline(
    name: str, request: Request, body: SnapshotRequest | None = None, _: Any = operator
) -> Any:
    """Deprecated: use `:snapshot`."""
    return await _resnapshot(request, name, body)


@router.post(
    "/{name}:reconcile",
    status_code=202,
    response_model=ReconcileAccepted,
    summary="Start a reconciliation now",
)
async def reconcile_pipeline(
    name: str, request: Request, body: ReconcileRequest | None = None, _: Any = operator
) -> ReconcileAccepted:
    """Compare source and lake (Merkle trees) now; returns the run's id."""
    body = body or ReconcileRequest()
    start = StartReconcileInput(
        collections=body.collections,
        repair=body.repair,
        mode=body.mode.value if body.mode else "",
    )
    await _status(request, name)  # 404 for unknown names
    started = await _update(
        request, name, "reconcile", start, "Reconciliation refused", StartReconcileResult
    )
    return ReconcileAccepted(name=name, id=started.id, collections=started.collections)


def _summary(description: Any) -> ReconciliationSummary:
    return ReconciliationSummary(
        id=description.id,
        status=description.status.name if description.status else "UNKNOWN",
        started_at=description.start_time,
        closed_at=description.close_time,
    )


def _pipeline_of(description: Any) -> str | None:
    attrs = {k.name: v for k, v in description.typed_search_attributes}
    value = attrs.get("LakewardPipeline")
    return value if isinstance(value, str) else None


@router.get(
    "/{name}/reconciliations",
    response_model=ReconciliationList,
    summary="A pipeline's reconciliation runs",
)
async def list_reconciliations(name: str, request: Request, _: Any = viewer) -> ReconciliationList:
    """Runs of the ReconcileWorkflow for this pipeline (on demand and scheduled), newest first,
    from Temporal visibility."""
    if not is_valid_name(name):
        raise _not_found(name)
    query = f"WorkflowType = '{RECONCILE_WORKFLOW}' AND LakewardPipeline = '{name}'"
    runs = [_summary(wf) async for wf in _client(request).list_workflows(query)]
    runs.sort(key=lambda run: run.started_at or dt.datetime.min.replace(tzinfo=dt.UTC))
    runs.reverse()
    return ReconciliationList(reconciliations=runs)


@router.get(
    "/{name}/reconciliations/{reconciliation_id}",
    response_model=ReconciliationDetail,
    summary="One reconciliation run",
)
async def get_reconciliation(
    name: str, reconciliation_id: str, request: Request, _: Any = viewer
) -> ReconciliationDetail:
    """Running: its `progress` query. Completed: its result (the report). Failed: why."""
    missing = Problem(
        404,
        "Reconciliation not found",
        f"pipeline {name!r} has no reconciliation {reconciliation_id!r}",
    )
    if not is_valid_name(name):
        raise missing
    handle = _client(request).get_workflow_handle(reconciliation_id)
    try:
        description = await handle.describe()
    except RPCError as exc:
        if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
            raise missing from exc
        raise
    if description.workflow_type != RECONCILE_WORKFLOW or _pipeline_of(description) != name:
        raise missing
    detail = ReconciliationDetail(**_summary(description).model_dump())
    if description.status == WorkflowExecutionStatus.RUNNING:
        try:
            detail.progress = await handle.query("progress")
        except (RPCError, WorkflowQueryFailedError, WorkflowQueryRejectedError):
            detail.progress = None  # not answerable (yet): no worker took it, no such query
    elif description.status == WorkflowExecutionStatus.COMPLETED:
        detail.result = await handle.result()
    else:
        try:
            await handle.result()
        except WorkflowFailureError as exc:
            cause = exc.cause
            detail.failure = getattr(cause, "message", None) or str(cause)
    return detail
