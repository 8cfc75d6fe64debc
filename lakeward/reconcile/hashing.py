"""Document, leaf and tree hashes (xxh3-128), and field-level differences.

A document's hash is taken over its *normalised form*: what the type factory writes and reads
back (`from_arrow`), key order made irrelevant by sorting every document's fields (the table
returns fields in column order, MongoDB in insertion order), then encoded as BSON (type-tagged,
so 1, 1.0, NumberLong(1) and "1" all hash apart) and hashed with xxh3-128.

A leaf's hash combines the `(key, document hash)` pairs of its keys in key order; a tree's inner
node hashes its children's hashes. Both sides build the same tree over the same leaf boundaries,
so equal roots mean equal key sets with equal documents, up to a 2**-128 collision.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import bson
import xxhash
from bson import json_util
from bson.json_util import CANONICAL_JSON_OPTIONS

__all__ = [
    "EMPTY_LEAF",
    "FieldDiff",
    "LeafHash",
    "MerkleTree",
    "document_hash",
    "field_diffs",
    "leaf_hash",
    "mismatching_leaves",
    "sorted_document",
]

#: The hash of a leaf without keys.
EMPTY_LEAF = xxhash.xxh3_128_hexdigest(b"")
_CODEC: bson.CodecOptions[dict[str, Any]] = bson.CodecOptions(tz_aware=True, tzinfo=dt.UTC)


def sorted_document(value: Any) -> Any:
    """A copy with every document's fields in sorted order, at any depth."""
    if isinstance(value, Mapping):
        return {k: sorted_document(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [sorted_document(v) for v in value]
    return value


def document_hash(doc: Mapping[str, Any]) -> bytes:
    """xxh3-128 of a normalised document (the 16-byte digest)."""
    return xxhash.xxh3_128_digest(bson.encode(sorted_document(doc), codec_options=_CODEC))


def leaf_hash(entries: Iterable[tuple[tuple[str, str], bytes]]) -> str:
    """The hash of a leaf's `((key, key type), document hash)` pairs, taken in key order
    (the caller sorts them by the key order; `LeafHash` does)."""
    parts = []
    for (key, key_type), digest in entries:
        text = key.encode("utf-8", "surrogatepass")
        parts.append(
            b"%b%b%b\x00%b" % (len(text).to_bytes(4, "little"), text, key_type.encode(), digest)
        )
    return xxhash.xxh3_128_hexdigest(b"".join(parts))


@dataclass
class LeafHash:
    """One leaf's documents as they are hashed: count and hash (hex)."""

    count: int = 0
    hash: str = EMPTY_LEAF


@dataclass
class MerkleTree:
    """A tree over leaf hashes: each inner node hashes up to `fanout` children in order.

    `levels[0]` are the leaves, `levels[-1]` is `[root]`.
    """

    levels: list[list[str]] = field(default_factory=list)
    fanout: int = 16

    @classmethod
    def build(cls, leaves: Sequence[str], fanout: int = 16) -> MerkleTree:
        levels = [list(leaves) or [EMPTY_LEAF]]
        while len(levels[-1]) > 1:
            below = levels[-1]
            levels.append(
                [
                    xxhash.xxh3_128_hexdigest("".join(below[i : i + fanout]).encode())
                    for i in range(0, len(below), fanout)
                ]
            )
        return cls(levels, fanout)

    @property
    def root(self) -> str:
        return self.levels[-1][0]


def mismatching_leaves(a: MerkleTree, b: MerkleTree) -> tuple[list[int], int]:
    """The leaf indexes whose hashes differ, found from the root down through mismatching
    nodes only; and how many node pairs were compared (the work done).

    Both trees must have the same shape (built over the same leaf boundaries).
    """
    if len(a.levels[0]) != len(b.levels[0]) or a.fanout != b.fanout:
        raise ValueError("trees over different leaves cannot be compared")
    compared = 1
    if a.root == b.root:
        return [], compared
    todo = [0]
    for depth in range(len(a.levels) - 2, -1, -1):
        below_a, below_b = a.levels[depth], b.levels[depth]
        nxt: list[int] = []
        for node in todo:
            for child in range(node * a.fanout, min((node + 1) * a.fanout, len(below_a))):
                compared += 1
                if below_a[child] != below_b[child]:
                    nxt.append(child)
        todo = nxt
    return todo, compared


@dataclass(frozen=True)
class FieldDiff:
    """One field that differs: its path (`a.b`, `items.2.price`), and each side's value as
    canonical Extended JSON (None: the field is absent on that side)."""

    path: str
    source: str | None
    lake: str | None


_MISSING = object()
#: Longest value text kept in a difference: the report says what differs, it is no copy.
VALUE_LIMIT = 200


def field_diffs(source: Any, lake: Any, limit: int = 100) -> list[FieldDiff]:
    """The fields where two normalised documents differ (value or type), up to `limit`."""
    out: list[FieldDiff] = []
    _diff(source, lake, "", out, limit)
    return out


def _diff(a: Any, b: Any, path: str, out: list[FieldDiff], limit: int) -> None:
    if len(out) >= limit:
        return
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b)):
            _diff(a.get(key, _MISSING), b.get(key, _MISSING), _join(path, key), out, limit)
        return
    if isinstance(a, list) and isinstance(b, list):
        for i in range(max(len(a), len(b))):
            _diff(
                a[i] if i < len(a) else _MISSING,
                b[i] if i < len(b) else _MISSING,
                _join(path, str(i)),
                out,
                limit,
            )
        return
    if _same(a, b):
        return
    out.append(FieldDiff(path or "$", _text(a), _text(b)))


def _same(a: Any, b: Any) -> bool:
    if a is _MISSING or b is _MISSING:
        return a is b
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b) and document_hash({"v": a}) == document_hash({"v": b})


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _text(value: Any) -> str | None:
    if value is _MISSING:
        return None
    text = json_util.dumps(value, json_options=CANONICAL_JSON_OPTIONS)
    return text if len(text) <= VALUE_LIMIT else text[: VALUE_LIMIT - 1] + "…"
