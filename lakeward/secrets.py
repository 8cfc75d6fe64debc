"""Resolving secret references (`env:VAR`, `file:/path`, `vault:<mount>/<path>#<key>`) at the
moment of use, and the secret files the embedded default generates once (payload key, bootstrap
admin token).

References, not values, travel through workflow inputs and history; activities resolve them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from workflows.spec import SECRET_REFERENCE_PREFIXES

__all__ = [
    "SecretExpiredError",
    "SecretReferenceError",
    "is_reference",
    "read_or_create_secret_file",
    "resolve",
    "resolve_local",
    "resolve_many",
]


class SecretReferenceError(ValueError):
    """A reference that cannot be resolved; the message names it but never a secret value.

    `transient`: the secret store did not answer (Vault down), so retrying may help."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class SecretExpiredError(SecretReferenceError):
    """Dynamic credentials whose lease expired while Vault did not answer for new ones."""

    def __init__(self, message: str) -> None:
        super().__init__(message, transient=True)


def is_reference(value: str) -> bool:
    """Whether `value` is a secret reference (resolved at use) rather than a plain value."""
    return value.startswith(SECRET_REFERENCE_PREFIXES)


def resolve(value: str) -> str:
    """The value a reference points at; a plain value is returned unchanged."""
    return resolve_many([value])[0]


def resolve_many(values: list[str]) -> list[str]:
    """The values of several references at once: vault: references to one path come from one
    read (one KV version, one lease), so a username and its password belong together."""
    vault_refs = [v for v in values if v.startswith("vault:")]
    resolved: dict[str, str] = {}
    if vault_refs:
        from lakeward import vault  # imported on use: it needs hvac and the settings

        try:
            resolved = dict(
                zip(vault_refs, vault.shared_client().resolve_many(vault_refs), strict=True)
            )
        except vault.LeaseExpiredError as exc:
            raise SecretExpiredError(str(exc)) from None
        except vault.VaultReferenceError as exc:
            raise SecretReferenceError(str(exc), transient=exc.transient) from None
    return [resolved[v] if v in resolved else resolve_local(v) for v in values]


def resolve_local(value: str) -> str:
    """An env: or file: reference's value (a plain value unchanged); no vault: here."""
    if value.startswith("env:"):
        name = value[4:]
        if name not in os.environ:
            raise SecretReferenceError(
                f"environment variable {name!r} is not set in the worker; "
                "set it or change the reference"
            )
        return os.environ[name]
    if value.startswith("file:"):
        path = Path(value[5:])
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise SecretReferenceError(f"cannot read secret file {path}: {exc.strerror}") from exc
    if value.startswith("vault:"):
        raise SecretReferenceError(
            "a vault: reference cannot name another secret (e.g. LAKEWARD_VAULT_TOKEN); use "
            "env:VAR or file:/path"
        )
    return value


def read_or_create_secret_file(path: Path, generate: Callable[[], str]) -> str:
    """The secret stored in `path`, generated once (file mode 0600) when the file is missing.

    Processes starting at the same moment (a worker and the API) agree on one secret: the file
    is written aside and linked into place, so it appears whole or not at all, and the process
    that loses the race reads the winner's.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, aside = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")  # mode 0600
        try:
            with os.fdopen(fd, "w") as out:
                out.write(generate() + "\n")
            with contextlib.suppress(FileExistsError):  # another process was first: use theirs
                os.link(aside, path)
        finally:
            os.unlink(aside)
    return path.read_text().strip()
