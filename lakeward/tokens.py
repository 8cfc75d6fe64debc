"""API bearer tokens: stored as SHA-256 hashes only, in one JSON file shared by API and CLI.

Tokens are 256 random bits, so a plain SHA-256 is enough (a slow password hash guards low-entropy
secrets; these have none to guess). The file holds names, roles and hashes, never a token: the
value is shown once, when `lakeward token create` makes it. The API re-reads the file whenever it
changes, so a revoked token is refused on its next request.

The bootstrap admin token is separate: `LAKEWARD_ADMIN_TOKEN`, or when that is unset a token the
embedded default generates into `.lakeward/admin-token` (mode 0600), which the CLI reads.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

from lakeward.secrets import read_or_create_secret_file, resolve
from lakeward.settings import Settings

__all__ = [
    "BOOTSTRAP_ADMIN",
    "Role",
    "TokenError",
    "TokenRecord",
    "TokenStore",
    "client_token",
    "ensure_admin_token",
    "generate_token",
    "hash_token",
    "read_admin_token",
]

TOKEN_PREFIX = "lwt_"


#: The name the bootstrap admin token (LAKEWARD_ADMIN_TOKEN) goes by; no named token takes it.
BOOTSTRAP_ADMIN = "admin"


class Role(StrEnum):
    """What a token may do; each role includes the ones before it."""

    viewer = "viewer"  # read
    operator = "operator"  # and create, pause, resume, snapshot, reconcile
    admin = "admin"  # and reconfigure, stop: everything

    def allows(self, needed: Role) -> bool:
        order = list(Role)
        return order.index(self) >= order.index(needed)


class TokenError(ValueError):
    """A token operation that cannot be done (unknown name, a name taken, a bad file)."""


@dataclass(frozen=True)
class TokenRecord:
    id: str
    name: str
    role: Role
    sha256: str
    created_at: str
    revoked_at: str | None = None

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


def generate_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _write_private(path: Path, text: str) -> None:
    """Replace `path` atomically with a file only its owner can read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class TokenStore:
    """The token file: create, list, revoke (CLI) and identify (API)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._records: list[TokenRecord] = []

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _read(self) -> list[TokenRecord]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise TokenError(f"cannot read the token file {self.path}: {exc}") from exc
        return [TokenRecord(**{**r, "role": Role(r["role"])}) for r in raw.get("tokens", [])]

    def records(self) -> list[TokenRecord]:
        """Every token, revoked ones included; re-read only when the file changed."""
        seen = self._stat()
        if seen != self._seen:
            self._records = self._read() if seen else []
            self._seen = seen
        return list(self._records)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[TokenRecord]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(f".{self.path.name}.lock")
        with open(lock, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            records = self._read()
            yield records
            body = {"version": 1, "tokens": [{**asdict(r), "role": r.role.value} for r in records]}
            _write_private(self.path, json.dumps(body, indent=2) + "\n")

    def create(self, name: str, role: Role) -> tuple[TokenRecord, str]:
        """A new token; returns its record and its value (shown once, never stored)."""
        if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").isalnum():
            raise TokenError("a token name is 1-64 letters, digits, '-' or '_'")
        if name == BOOTSTRAP_ADMIN:
            raise TokenError(
                f"{BOOTSTRAP_ADMIN!r} names the bootstrap admin token in the audit log and the "
                "rate limits; choose another name"
            )
        token = generate_token()
        with self._locked() as records:
            if any(r.name == name and r.is_active for r in records):
                raise TokenError(f"an active token is already named {name!r}; revoke it first")
            record = TokenRecord(
                id=secrets.token_hex(6),
                name=name,
                role=role,
                sha256=hash_token(token),
                created_at=_now(),
            )
            records.append(record)
        return record, token

    def revoke(self, name_or_id: str) -> TokenRecord:
        """Revoke the active token with this name (or id); the API refuses it from then on."""
        with self._locked() as records:
            for i, record in enumerate(records):
                if record.is_active and name_or_id in (record.name, record.id):
                    records[i] = revoked = TokenRecord(**{**asdict(record), "revoked_at": _now()})
                    return revoked
        raise TokenError(f"no active token named {name_or_id!r}")

    def identify(self, token: str) -> TokenRecord | None:
        """The active token with this value, compared by hash in constant time."""
        digest = hash_token(token)
        found = None
        for record in self.records():
            if hmac.compare_digest(record.sha256, digest) and record.is_active:
                found = record
        return found


def read_admin_token(path: Path) -> str | None:
    """The generated bootstrap admin token, if the embedded default made one."""
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def ensure_admin_token(path: Path) -> str:
    """The bootstrap admin token in `path`, generated (mode 0600) on first start; an API and a
    CLI starting together agree on one (the file appears whole or not at all)."""
    return read_or_create_secret_file(path, generate_token)


def client_token(settings: Settings) -> str | None:
    """The token a client of the API sends: LAKEWARD_API_TOKEN, else LAKEWARD_ADMIN_TOKEN, else
    the bootstrap token the embedded default generated. A secret reference is resolved."""
    for secret in (settings.api_token, settings.admin_token):
        if secret is not None and secret.get_secret_value():
            return resolve(secret.get_secret_value())
    return read_admin_token(settings.admin_token_file)
