"""Resolving secret references (`env:VAR`, `file:/path`) at the moment of use.

References, not values, travel through workflow inputs and history; activities resolve them.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["SecretReferenceError", "resolve"]


class SecretReferenceError(ValueError):
    """A reference that cannot be resolved; the message names it but never a secret value."""


def resolve(value: str) -> str:
    """The value a reference points at; a plain value is returned unchanged."""
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
            "vault: references are not supported by this version yet; use env:VAR or file:/path"
        )
    return value
