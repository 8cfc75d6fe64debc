"""The FastAPI facade: starts pipeline workflows, signals them and reads their status.

It talks to Temporal through the client only. Errors are RFC 9457 problem+json.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import make_asgi_app
from pydantic import BaseModel, ConfigDict, Field
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from lakeward.settings import Settings
from workflows.contracts import (
    DATA_CONVERTER,
    PIPELINE_WORKFLOW,
    PipelineState,
    PipelineStatus,
    StartPipelineInput,
)
from workflows.pipeline import PipelineWorkflow, search_attributes
from workflows.spec import PipelineSpec, is_valid_name

__all__ = ["create_app"]


class ResnapshotRequest(BaseModel):
    """Body of `POST /v1/pipelines/{name}:resnapshot` (optional)."""

    model_config = ConfigDict(extra="forbid")
    #: Collections to copy again; empty: every collection the pipeline captures.
    collections: list[str] = Field(default_factory=list)


class Problem(Exception):
    """An RFC 9457 problem; the handler renders it as application/problem+json."""

    def __init__(self, status: int, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.extra = status, title, detail, extra


def _problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


def _jsonable(status: PipelineStatus) -> dict[str, Any]:
    body = dataclasses.asdict(status)
    body["state"] = status.state.value
    body["spec"] = status.spec.model_dump(mode="json")
    return body


def create_app(settings: Settings | None = None, client: Client | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.client = client or await Client.connect(
            settings.temporal_address,
            namespace=settings.temporal_namespace,
            data_converter=DATA_CONVERTER,
        )
        yield

    app = FastAPI(title="Lakeward", version="0.1.0", lifespan=lifespan)
    app.mount("/metrics", make_asgi_app())
    if client is not None:
        app.state.client = client  # tests drive the app without running its lifespan

    @app.exception_handler(Problem)
    async def _on_problem(_: Request, exc: Problem) -> JSONResponse:
        return _problem(exc.status, exc.title, exc.detail, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _on_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"]}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return _problem(422, "Invalid pipeline spec", detail, errors=errors)

    def _client(request: Request) -> Client:
        return request.app.state.client

    async def _status(request: Request, name: str) -> PipelineStatus:
        if not is_valid_name(name):
            raise Problem(404, "Pipeline not found", f"no pipeline named {name!r}")
        handle = _client(request).get_workflow_handle(f"pipeline:{name}")
        try:
            return await handle.query(PipelineWorkflow.status)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise Problem(404, "Pipeline not found", f"no pipeline named {name!r}") from exc
            raise

    @app.post("/v1/pipelines", status_code=201)
    async def create_pipeline(spec: PipelineSpec, request: Request) -> JSONResponse:
        spec = spec.with_absolute_sink(Path.cwd())
        start = StartPipelineInput(
            spec=spec, topic_prefix=settings.topic_prefix, io_task_queue=settings.io_task_queue
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
                return JSONResponse(_jsonable(current), status_code=200)
            raise Problem(
                409,
                "Pipeline already exists",
                f"pipeline {spec.name!r} is running with a different spec; "
                "stop it first or choose another name",
            ) from None
        return JSONResponse(_jsonable(await _status(request, spec.name)), status_code=201)

    @app.get("/v1/pipelines")
    async def list_pipelines(request: Request, state: str | None = None) -> dict[str, Any]:
        query = f"WorkflowType = '{PIPELINE_WORKFLOW}'"
        if state:
            if not state.isalpha():
                raise Problem(422, "Invalid filter", "state must be a word such as STREAMING")
            query += f" AND LakewardState = '{state.upper()}'"
        items = []
        async for wf in _client(request).list_workflows(query):
            if wf.status != WorkflowExecutionStatus.RUNNING and wf.status is not None:
                continue
            attrs = {k.name: v for k, v in wf.typed_search_attributes}  # type: ignore[attr-defined]
            items.append(
                {
                    "name": attrs.get("LakewardPipeline"),
                    "state": attrs.get("LakewardState"),
                    "source": attrs.get("LakewardSource"),
                    "workflow_id": wf.id,
                }
            )
        return {"pipelines": items}

    @app.get("/v1/pipelines/{name}")
    async def get_pipeline(name: str, request: Request) -> dict[str, Any]:
        return _jsonable(await _status(request, name))

    async def _signal(request: Request, name: str, signal: str) -> dict[str, Any]:
        await _status(request, name)  # 404 for unknown names
        handle = _client(request).get_workflow_handle(f"pipeline:{name}")
        try:
            await handle.signal(signal)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise Problem(409, "Pipeline not running", f"pipeline {name!r} has ended") from exc
            raise
        return {"name": name, "signal": signal, "accepted": True}

    @app.post("/v1/pipelines/{name}:pause", status_code=202)
    async def pause_pipeline(name: str, request: Request) -> dict[str, Any]:
        return await _signal(request, name, "pause")

    @app.post("/v1/pipelines/{name}:resume", status_code=202)
    async def resume_pipeline(name: str, request: Request) -> dict[str, Any]:
        return await _signal(request, name, "resume")

    @app.post("/v1/pipelines/{name}:resnapshot", status_code=202)
    async def resnapshot_pipeline(
        name: str, request: Request, body: ResnapshotRequest | None = None
    ) -> dict[str, Any]:
        """Copy collections again (all the pipeline captures when none are named); once a
        copy's rows are applied, rows of documents that no longer exist are removed."""
        await _status(request, name)  # 404 for unknown names
        handle = _client(request).get_workflow_handle(f"pipeline:{name}")
        try:
            accepted = await handle.execute_update(
                PipelineWorkflow.resnapshot, body.collections if body else []
            )
        except WorkflowUpdateFailedError as exc:
            detail = str(exc.cause.message if hasattr(exc.cause, "message") else exc.cause)
            raise Problem(422, "Re-snapshot refused", detail) from exc
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND or "completed" in exc.message:
                raise Problem(409, "Pipeline not running", f"pipeline {name!r} has ended") from exc
            raise
        return {"name": name, "collections": accepted, "accepted": True}

    @app.delete("/v1/pipelines/{name}", status_code=202)
    async def stop_pipeline(name: str, request: Request) -> dict[str, Any]:
        return await _signal(request, name, "stop")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        try:
            await _client(request).service_client.check_health()
        except Exception as exc:
            return _problem(503, "Temporal unreachable", str(exc))
        return JSONResponse({"status": "ready"})

    return app
