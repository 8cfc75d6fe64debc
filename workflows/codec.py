"""Payload encryption: an AES-GCM payload codec and the data converter that uses it.

Not workflow code. Codecs run in clients and workers, outside the workflow sandbox, and no
workflow module imports this one (an import-linter contract keeps it so); the nonces it draws
are encryption's randomness, never a workflow's. It lives beside DATA_CONVERTER because it is
part of how every payload is encoded, and every layer that talks to Temporal shares it.

Each payload is serialised whole (its metadata too) and sealed with AES-256-GCM under the
current key; the result carries the key's id in its metadata, so decoding picks the right key
after a rotation. The codec does no I/O: callers hand it key bytes (see lakeward/keys.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterable, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
    PayloadConverter,
)

from workflows.contracts import DATA_CONVERTER

__all__ = [
    "ENCRYPTED_ENCODING",
    "KEY_BYTES",
    "KEY_ID_METADATA",
    "CompactFailureConverter",
    "EncryptionCodec",
    "PayloadDecryptionError",
    "UnknownPayloadKeyError",
    "encrypted_converter",
    "key_id",
]

#: The `encoding` metadata of an encrypted payload (the name Temporal's samples use).
ENCRYPTED_ENCODING = b"binary/encrypted"
#: Metadata naming the key that sealed a payload.
KEY_ID_METADATA = "encryption-key-id"
KEY_BYTES = 32  # AES-256
_NONCE_BYTES = 12  # GCM's standard nonce; random per payload
_TAG_BYTES = 16


class PayloadDecryptionError(ValueError):
    """An encrypted payload cannot be opened. The message names the key id, never a key."""


class UnknownPayloadKeyError(PayloadDecryptionError):
    """A payload sealed with a key this process was not given."""


def key_id(key: bytes) -> str:
    """A key's public name: a fingerprint, so two different keys never share an id and a
    rotation needs no naming scheme. A truncated hash of a random 256-bit key reveals nothing
    usable about it."""
    return "k" + hashlib.sha256(b"lakeward payload key id\x00" + key).hexdigest()[:16]


class EncryptionCodec(PayloadCodec):
    """Encrypts with the current key; decrypts with the current key or any previous one.

    Payloads without the encrypted encoding pass through decode unchanged, so histories
    written before encryption was turned on still read.
    """

    def __init__(self, current: bytes, previous: Iterable[bytes] = ()) -> None:
        super().__init__()
        keys = [current, *previous]
        for key in keys:
            if len(key) != KEY_BYTES:
                raise ValueError(f"a payload key must be {KEY_BYTES} bytes, not {len(key)}")
        self._current_id = key_id(current)
        self._ciphers = {key_id(key): AESGCM(key) for key in keys}

    @property
    def key_id(self) -> str:
        """The id new payloads are sealed under."""
        return self._current_id

    @property
    def known_key_ids(self) -> list[str]:
        return list(self._ciphers)

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(p) for p in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        nonce = os.urandom(_NONCE_BYTES)
        kid = self._current_id.encode()
        sealed = self._ciphers[self._current_id].encrypt(nonce, payload.SerializeToString(), kid)
        return Payload(
            metadata={"encoding": ENCRYPTED_ENCODING, KEY_ID_METADATA: kid},
            data=nonce + sealed,
        )

    def decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCRYPTED_ENCODING:
            return payload
        kid = payload.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise UnknownPayloadKeyError(
                f"payload is encrypted with key id {kid!r}, which this process does not have "
                f"(it knows {', '.join(self._ciphers)}); add that key to "
                "LAKEWARD_PAYLOAD_PREVIOUS_KEYS, or set LAKEWARD_PAYLOAD_KEY to it"
            )
        nonce, sealed = payload.data[:_NONCE_BYTES], payload.data[_NONCE_BYTES:]
        try:
            if len(sealed) < _TAG_BYTES:
                raise InvalidTag  # truncated: not even room for the tag
            plain = cipher.decrypt(nonce, sealed, kid.encode())
        except InvalidTag:
            raise PayloadDecryptionError(
                f"payload encrypted with key id {kid!r} failed authentication: it was altered "
                "after encryption"
            ) from None
        return Payload.FromString(plain)


#: Temporal keeps the last failure of a retrying activity only when it is small (the server's
#: limit.mutableStateActivityFailureSize.error, 4 KB by default); a bigger one reads "Failure
#: exceeds size limit." wherever the pending activity is described (the API's `retrying`).
MESSAGE_CHARS = 700
STACK_TRACE_CHARS = 400
CAUSES = 2


class CompactFailureConverter(DefaultFailureConverterWithEncodedAttributes):
    """Encoded failures (message and stack trace sealed like payloads) kept under Temporal's
    limit for a retrying activity's last failure: each message cut to MESSAGE_CHARS, each stack
    trace to its innermost STACK_TRACE_CHARS, at most CAUSES causes. The worker's log keeps the
    whole traceback."""

    def to_failure(
        self, exception: BaseException, payload_converter: PayloadConverter, failure: Failure
    ) -> None:
        super().to_failure(exception, payload_converter, failure)
        _compact(failure, payload_converter, CAUSES)


def _compact(failure: Failure, payload_converter: PayloadConverter, causes: int) -> None:
    if failure.HasField("encoded_attributes"):
        [attributes] = payload_converter.from_payloads([failure.encoded_attributes])
        message, stack = attributes.get("message", ""), attributes.get("stack_trace", "")
        if len(message) > MESSAGE_CHARS or len(stack) > STACK_TRACE_CHARS:
            message = (
                message if len(message) <= MESSAGE_CHARS else message[: MESSAGE_CHARS - 1] + "…"
            )
            stack = stack[-STACK_TRACE_CHARS:]
            compacted = {"message": message, "stack_trace": stack}
            failure.encoded_attributes.CopyFrom(payload_converter.to_payloads([compacted])[0])
    if failure.HasField("cause"):
        if causes == 0:
            failure.ClearField("cause")
        else:
            _compact(failure.cause, payload_converter, causes - 1)


def encrypted_converter(codec: PayloadCodec) -> DataConverter:
    """DATA_CONVERTER with the codec applied to every payload, failure messages and stack
    traces included (they are moved into an encoded attribute, so errors that mention a table
    or a host are sealed too), each failure compacted to fit Temporal's size limit."""
    return dataclasses.replace(
        DATA_CONVERTER,
        payload_codec=codec,
        failure_converter_class=CompactFailureConverter,
    )
