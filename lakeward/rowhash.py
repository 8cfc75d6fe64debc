"""The per-row `_hash`: xxh3-128 of a document's BSON as MongoDB stores it.

Apply writes it next to every current-state row (the document of the change it applied,
re-encoded from the envelope's canonical Extended JSON, which keeps every type and the field
order, so the bytes are MongoDB's own). Reconciliation's `fast` mode compares it with the
same hash taken over the raw BSON of a scan: neither side decodes a document. It vouches for
what apply was given, not for what the data columns hold now: `deep` mode recomputes from them.

A document whose re-encoding differs from MongoDB's bytes (a DBRef with its fields in an unusual
order, a Debezium envelope's lossy legacy JSON) only makes its key a candidate that
verification then compares in full; it never makes a difference appear.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import bson
import xxhash

from lakeward.events import canonical_key

__all__ = ["document_bson_hash", "raw_batch_hashes"]

_INT32 = struct.Struct("<i")
#: Value sizes of the fixed-size BSON types an `_id` can have (type byte -> bytes).
_FIXED = {0x01: 8, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16,
          0x7F: 0, 0xFF: 0}  # fmt: skip
#: Length-prefixed types whose value is `int32 length` + that many bytes (string, code, symbol).
_STRING_LIKE = {0x02, 0x0D, 0x0E}
#: Types whose int32 prefix counts itself (embedded document, array, code with scope).
_SELF_SIZED = {0x03, 0x04, 0x0F}
_ID_NAME = b"_id\x00"
_CODEC: bson.CodecOptions[dict[str, Any]] = bson.CodecOptions(tz_aware=True)


def document_bson_hash(doc: Mapping[str, Any]) -> bytes:
    """The 16-byte xxh3-128 of the document encoded as BSON, fields in their given order."""
    return xxhash.xxh3_128_digest(bson.encode(doc))


def raw_batch_hashes(batch: bytes) -> list[tuple[tuple[str, str], bytes]]:
    """(canonical key, `document_bson_hash`) of each document in a raw batch of concatenated
    BSON documents (a `find_raw_batches` batch), in the batch's order. Only the `_id` element
    is decoded."""
    out = []
    view = memoryview(batch)
    pos, end = 0, len(batch)
    digest = xxhash.xxh3_128_digest
    while pos < end:
        (size,) = _INT32.unpack_from(batch, pos)
        if batch[pos + 4] == 0x07 and batch[pos + 5 : pos + 9] == _ID_NAME:
            key = (batch[pos + 9 : pos + 21].hex(), "objectId")  # canonical_key's, unbuilt
        else:
            key = canonical_key(_first_id(batch, pos, size))
        out.append((key, digest(view[pos : pos + size])))
        pos += size
    return out


def _first_id(batch: bytes, pos: int, size: int) -> Any:
    """The `_id` of the document at `pos`: MongoDB stores it first, so only that element is
    decoded (the whole document when it is not first)."""
    kind = batch[pos + 4]
    if batch[pos + 5 : pos + 9] == _ID_NAME:
        start = pos + 9
        length = _value_length(kind, batch, start)
        if length is not None:
            element = batch[pos + 4 : start + length]
            mini = _INT32.pack(len(element) + 5) + element + b"\x00"
            return bson.decode(mini, _CODEC)["_id"]
    return bson.decode(batch[pos : pos + size], _CODEC)["_id"]


def _value_length(kind: int, batch: bytes, start: int) -> int | None:
    if kind in _FIXED:
        return _FIXED[kind]
    if kind in _STRING_LIKE:
        return 4 + int(_INT32.unpack_from(batch, start)[0])
    if kind in _SELF_SIZED:
        return int(_INT32.unpack_from(batch, start)[0])
    if kind == 0x05:  # binary: int32 length, subtype byte, bytes
        return 5 + int(_INT32.unpack_from(batch, start)[0])
    return None  # regex, DBPointer, ...: rare as an _id; decode the document
