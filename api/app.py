"""The FastAPI facade: starts pipeline workflows, signals them and reads their status.

It talks to Temporal through the client only. Every `/v1` route needs a bearer token (api/auth.py);
every mutating call is written to the audit log (api/audit.py); errors are RFC 9457
problem+json (api/errors.py). `/healthz`, `/readyz` and `/metrics` need no token: probes and
Prometheus scrape them, and they reveal nothing about pipelines.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from opentelemetry.sdk.trace import TracerProvider
from pydantic import BaseModel
from temporalio.client import Client

from api.audit import AuditLog, AuditMiddleware
from api.auth import Authenticator
from api.codec import api_data_converter, codec_guard, install_codec
from api.errors import PROBLEM_JSON, install_error_handlers, problem_response
from api.hardening import install_hardening
from api.metrics import install_metrics
from api.pipelines import router as pipelines_router
from api.schemas import ProblemDetails
from api.temporal import connect_client
from api.tracing import TracingMiddleware, client_interceptors
from lakeward import vault
from lakeward.settings import Settings
from lakeward.tokens import Role
from lakeward.tracing import tracer_provider

__all__ = ["create_app"]


class Health(BaseModel):
    status: str


#: Problem statuses every authenticated route may answer, besides its own.
_SECURED_PROBLEMS = {
    "401": "Missing, unknown or revoked token.",
    "403": "The token's role does not allow this.",
    "404": "No such pipeline (or reconciliation).",
    "409": "The pipeline has ended or runs with another spec.",
    "422": "Invalid input, or a change the pipeline refused (field-level `errors`).",
    "429": "Over the token's (or, without one, the address's) rate limit; see Retry-After.",
    "500": "Unexpected error (no internals; a request id for the log).",
    "503": "Temporal unreachable; retry.",
}

_RETRY_AFTER = {
    "description": "Whole seconds until the next request is allowed.",
    "schema": {"type": "integer", "minimum": 1},
}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated document, with every error answer described as problem+json."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    problem = ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(problem.pop("$defs", {}))
    components["ProblemDetails"] = problem
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    content = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}}
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if "requestBody" in operation:
                responses.setdefault("400", {"description": "The body is not JSON."})
                responses.setdefault("413", {"description": "The body is over the size limit."})
            if operation.get("security") or path.startswith("/v1/"):
                for status, description in _SECURED_PROBLEMS.items():
                    responses.setdefault(status, {"description": description})
            else:
                responses.setdefault("500", {"description": _SECURED_PROBLEMS["500"]})
            for status, response in responses.items():
                if status.startswith(("4", "5")):
                    response["content"] = content
                if status == "429":
                    response["headers"] = {"Retry-After": _RETRY_AFTER}
    schema["paths"]["/readyz"]["get"]["responses"]["503"] = {
        "description": "Temporal unreachable.",
        "content": content,
    }
    app.openapi_schema = schema
    return schema


def create_app(
    settings: Settings | None = None,
    client: Client | None = None,
    tracing: TracerProvider | None = None,
) -> FastAPI:
    settings = settings or Settings()
    vault.configure(settings)  # vault: references resolve with this process's settings
    provider = tracing or tracer_provider(settings, "lakeward-api")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.client = client or await connect_client(
            settings,
            data_converter=api_data_converter(app, settings),
            interceptors=client_interceptors(provider),
        )
        yield

    app = FastAPI(
        title="Lakeward",
        version="0.1.0",
        description="Replicates MongoDB collections into Delta Lake; Temporal runs each "
        "pipeline. Authenticate with `Authorization: Bearer <token>` (roles viewer, operator, "
        "admin); errors are RFC 9457 problem+json. See docs/api.md.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.authenticator = Authenticator(settings)
    install_metrics(app)
    app.add_middleware(AuditMiddleware, log=AuditLog(settings.audit_log))
    # Outside the audit log (a flood is refused before it is written line by line), inside the
    # codec's CORS (a 429 still reaches the Web UI as an answer); api/hardening.py.
    install_hardening(app, settings)
    install_codec(
        app,
        settings,
        decode_guard=codec_guard(Role.viewer),
        encode_guard=codec_guard(Role.operator),
    )
    if provider is not None:  # outermost: the request's span covers audit and error handling
        app.add_middleware(TracingMiddleware, provider=provider)
    if client is not None:
        app.state.client = client  # tests drive the app without running its lifespan
    install_error_handlers(app)
    app.include_router(pipelines_router)

    @app.get("/healthz", response_model=Health, tags=["health"], summary="Liveness (no token)")
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, tags=["health"], summary="Readiness (no token)")
    async def readyz(request: Request) -> Any:
        """Ready when Temporal answers its health check."""
        try:
            await request.app.state.client.service_client.check_health()
        except Exception:
            return problem_response(503, "Temporal unavailable", "Temporal did not answer")
        return Health(status="ready")

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app
