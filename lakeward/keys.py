"""Where the payload codec's keys come from: settings, secret references, or a generated file.

`LAKEWARD_PAYLOAD_KEY` holds the current key (base64 of 32 bytes, or a secret reference that
resolves to it); `LAKEWARD_PAYLOAD_PREVIOUS_KEYS` the older ones, kept only to decrypt. With no
key configured, the embedded default generates one once into `.lakeward/payload.key` (mode 0600)
and every process started from the same folder reuses it. Errors name the setting or the file,
never a key.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass

from pydantic import SecretStr

from lakeward.secrets import SecretReferenceError, read_or_create_secret_file, resolve
from lakeward.settings import Settings

__all__ = [
    "PayloadKeyError",
    "PayloadKeys",
    "decode_key",
    "load_payload_keys",
    "new_key_text",
]

_KEY_BYTES = 32  # AES-256


class PayloadKeyError(ValueError):
    """A payload key that cannot be used; the message says where it came from and what to do."""


@dataclass(frozen=True, repr=False)
class PayloadKeys:
    """The key new payloads are encrypted with, and older keys kept for decrypting."""

    current: bytes
    previous: tuple[bytes, ...] = ()

    def __repr__(self) -> str:  # never print key bytes
        return f"PayloadKeys(current=<hidden>, previous=<{len(self.previous)} hidden>)"


def new_key_text() -> str:
    """A fresh random key in the form the settings take (base64 of 32 bytes)."""
    return base64.b64encode(os.urandom(_KEY_BYTES)).decode()


def decode_key(text: str, where: str) -> bytes:
    """The 32 key bytes that `text` (base64) holds; `where` names its origin in errors."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise PayloadKeyError(
            f"{where} is not base64; a payload key is base64 of 32 random bytes"
        ) from None
    if len(key) != _KEY_BYTES:
        raise PayloadKeyError(
            f"{where} decodes to {len(key)} bytes, not {_KEY_BYTES}; generate a key with "
            "python -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())'"
        )
    return key


def _configured_key(value: SecretStr, where: str) -> bytes:
    try:
        text = resolve(value.get_secret_value())
    except SecretReferenceError as exc:
        raise PayloadKeyError(f"{where}: {exc}") from None
    return decode_key(text, where)


def load_payload_keys(settings: Settings) -> PayloadKeys:
    """The keys this process encrypts and decrypts Temporal payloads with."""
    # Empty counts as unset, as compose's `${LAKEWARD_PAYLOAD_KEY:-}` passes it.
    if settings.payload_key is None or not settings.payload_key.get_secret_value():
        path = settings.payload_key_file
        try:
            text = read_or_create_secret_file(path, new_key_text)
        except OSError as exc:
            raise PayloadKeyError(f"cannot read or create {path}: {exc.strerror}") from exc
        current = decode_key(text, str(path))
    else:
        current = _configured_key(settings.payload_key, "LAKEWARD_PAYLOAD_KEY")
    previous = tuple(
        _configured_key(value, f"LAKEWARD_PAYLOAD_PREVIOUS_KEYS[{i}]")
        for i, value in enumerate(settings.payload_previous_keys)
    )
    return PayloadKeys(current, previous)
