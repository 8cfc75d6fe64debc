"""The audit log: one JSON line per mutating API call, appended to a file the API never serves.

A line holds who (the token's name and role, null when no valid token came), what (method, path,
pipeline), when (UTC) and the result (HTTP status). Request bodies are never written, so no secret
in a spec reaches the log. Calls refused for a missing or bad token are written too.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["AuditLog", "AuditMiddleware", "scrub"]

_MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
#: Not audited: decoding and encoding payloads change nothing (the Web UI calls them constantly).
_UNAUDITED_PREFIXES = ("/codec/decode", "/codec/encode")
_PIPELINE = re.compile(r"^/v1/pipelines/([^/:]+)")
_log = logging.getLogger("lakeward.api.audit")
#: Paths are what a client sent: long enough for every route, short enough not to bloat the log.
MAX_PATH_CHARS = 512
#: What could be a secret in a path a client sent: a token, or the credentials of a URI.
_SECRET_IN_PATH = re.compile(r"lwt_[A-Za-z0-9_-]+|(?<=://)[^/@\s]*:[^/@\s]*(?=@)")


def scrub(path: str) -> str:
    """The path as the log keeps it: anything shaped like a token or a URI's user:password
    replaced by `***`, and cut at MAX_PATH_CHARS."""
    cleaned = _SECRET_IN_PATH.sub("***", path)
    if len(cleaned) > MAX_PATH_CHARS:
        cleaned = cleaned[:MAX_PATH_CHARS] + "...(cut)"
    return cleaned


class AuditLog:
    """Append-only JSON lines in `path` (mode 0600), one write per entry."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, entry: dict[str, Any]) -> None:
        """Append one line and fsync it: once the call has its answer, its entry is on disk.

        json.dumps escapes every control character and (ensure_ascii) every non-ASCII one, so
        no value a client sent (a path with %0a in it) can end a line or start a forged one.
        """
        line = (json.dumps(entry, separators=(",", ":"), sort_keys=True) + "\n").encode()
        with self._lock:
            created = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:  # the new file's directory entry must survive a crash too
                directory = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(directory)
                finally:
                    os.close(directory)


class AuditMiddleware:
    """Writes an entry once a mutating call has its response status."""

    def __init__(self, app: ASGIApp, log: AuditLog) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in _MUTATING
            or scope["path"].startswith(_UNAUDITED_PREFIXES)
        ):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})  # where the auth dependency leaves the identity
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            await self._record(scope, state, status)

    async def _record(self, scope: Scope, state: dict[str, Any], status: int) -> None:
        identity = state.get("identity")
        path = scrub(scope["path"])
        match = _PIPELINE.match(path)
        entry = {
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "who": identity.name if identity else None,
            "role": identity.role.value if identity else None,
            "method": scope["method"],
            "path": path,
            "pipeline": state.get("audit_pipeline") or (match.group(1) if match else None),
            "status": status,
            "client": (scope.get("client") or [None])[0],
        }
        try:
            await anyio.to_thread.run_sync(self.log.append, entry)
        except OSError as exc:
            # The call already happened; losing its entry must be loud, not fatal.
            _log.error("audit log %s not written: %s (entry %s)", self.log.path, exc, entry)
