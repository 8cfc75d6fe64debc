"""RFC 9457 problem details: every error the API answers is `application/problem+json`.

Unknown routes (404), wrong methods (405), invalid input (422), Temporal being unreachable (503)
and unexpected errors (500) all take this shape; a 500 says nothing of the internals (the server
log has the traceback, under the same request id).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.service import RPCError, RPCStatusCode

__all__ = ["PROBLEM_JSON", "Problem", "install_error_handlers", "problem_response"]

PROBLEM_JSON = "application/problem+json"
_log = logging.getLogger("lakeward.api")

#: Temporal answers that mean "not reachable now": retrying later may work.
_UNAVAILABLE = {RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED}


class Problem(Exception):
    """An RFC 9457 problem; the handler renders it as application/problem+json."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail
        self.headers, self.extra = headers or {}, extra


def problem_response(
    status: int,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _field(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(p) for p in loc if p not in ("body", "query", "path"))


def field_errors(errors: list[Any]) -> list[dict[str, str]]:
    """Pydantic errors as {field, message}; never the input value (it may hold a secret)."""
    return [{"field": _field(e["loc"]), "message": e["msg"]} for e in errors]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _on_problem(_: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.title, exc.detail, exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _on_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = field_errors(list(exc.errors()))
        detail = "; ".join(f"{e['field'] or 'body'}: {e['message']}" for e in errors)
        return problem_response(422, "Invalid request", detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {404: "Not Found", 405: "Method Not Allowed"}
        title = titles.get(exc.status_code, "HTTP error")
        detail = exc.detail if isinstance(exc.detail, str) else title
        if exc.status_code == 404:
            detail = "no such endpoint; GET /docs lists them"
        return problem_response(exc.status_code, title, detail, dict(exc.headers or {}))

    @app.exception_handler(RPCError)
    async def _on_temporal(request: Request, exc: RPCError) -> JSONResponse:
        if exc.status in _UNAVAILABLE:
            return problem_response(
                503,
                "Temporal unavailable",
                "Temporal did not answer; retry shortly (GET /readyz shows when it is back)",
                {"Retry-After": "5"},
            )
        return await _on_unexpected(request, exc)

    @app.exception_handler(Exception)
    async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = uuid.uuid4().hex[:12]
        _log.error(
            "unexpected error %s on %s %s",
            request_id,
            request.method,
            request.url.path,
            exc_info=exc,
        )
        return problem_response(
            500,
            "Internal Server Error",
            f"an unexpected error; the API's log has it under request id {request_id}",
            request_id=request_id,
        )
