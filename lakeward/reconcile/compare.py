"""The pure comparison: leaves from key order, leaf hashes, classification of differences.

Both sides (MongoDB and the lake) go through these functions, and so does the in-memory
`reconcile_maps` the property tests drive: what is tested is what runs.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lakeward.reconcile.hashing import (
    FieldDiff,
    LeafHash,
    MerkleTree,
    document_hash,
    field_diffs,
    leaf_hash,
    mismatching_leaves,
)
from lakeward.reconcile.keys import OrderKey, canonical_order_key, order_key

__all__ = [
    "Difference",
    "Key",
    "Outcome",
    "classify",
    "key_order",
    "leaf_hashes",
    "leaf_of",
    "reconcile_maps",
]

#: A canonical key: (key, key type), as `lakeward.events.canonical_key` returns it.
Key = tuple[str, str]

MISSING, EXTRA, CHANGED = "missing", "extra", "changed"


@dataclass(frozen=True)
class Difference:
    """One key whose document differs: `missing` in the lake, `extra` in the lake, or `changed`
    (with the fields that differ)."""

    key: str
    key_type: str
    kind: str
    fields: tuple[FieldDiff, ...] = ()


def key_order(key: Key) -> tuple[OrderKey, str, str]:
    """The sort key of a canonical key: MongoDB's `_id` order, ties (none expected) by text."""
    return (canonical_order_key(*key), key[0], key[1])


def leaf_of(bounds: Sequence[OrderKey], key_order_key: OrderKey) -> int:
    """The index of the leaf holding a key, for interior boundaries `bounds` (ascending order
    keys b1..bn): leaf 0 is below b1, leaf i is [b_i, b_i+1), leaf n is from bn on."""
    return bisect.bisect_right(bounds, key_order_key)


def leaf_hashes(
    entries: Iterable[tuple[Key, OrderKey, bytes]], bounds: Sequence[OrderKey]
) -> list[LeafHash]:
    """Per leaf: how many keys and the hash of `(key, document hash)` in key order."""
    buckets: list[list[tuple[OrderKey, Key, bytes]]] = [[] for _ in range(len(bounds) + 1)]
    for key, order, digest in entries:
        buckets[leaf_of(bounds, order)].append((order, key, digest))
    out = []
    for bucket in buckets:
        bucket.sort(key=lambda e: (e[0], e[1]))
        out.append(LeafHash(len(bucket), leaf_hash((k, d) for _, k, d in bucket)))
    return out


def classify(
    source: Mapping[Key, Mapping[str, Any] | None], lake: Mapping[Key, Mapping[str, Any] | None]
) -> list[Difference]:
    """The differences between two sides' normalised documents of the same keys (None or an
    absent key: no document there), in key order."""
    out = []
    for key in sorted(set(source) | set(lake), key=key_order):
        a, b = source.get(key), lake.get(key)
        if a is None and b is None:
            continue
        if b is None:
            out.append(Difference(key[0], key[1], MISSING))
        elif a is None:
            out.append(Difference(key[0], key[1], EXTRA))
        elif document_hash(a) != document_hash(b):
            out.append(Difference(key[0], key[1], CHANGED, tuple(field_diffs(a, b))))
    return out


@dataclass
class Outcome:
    """What `reconcile_maps` found and how much it looked at."""

    differences: list[Difference] = field(default_factory=list)
    leaves: int = 0
    mismatching_leaves: int = 0
    nodes_compared: int = 0


def reconcile_maps(
    source: Mapping[Key, Mapping[str, Any]],
    lake: Mapping[Key, Mapping[str, Any]],
    bounds: Sequence[Any],
    fanout: int = 16,
) -> Outcome:
    """The whole algorithm over two in-memory sides: leaves cut at the BSON values `bounds`
    (ascending, from the source), hashed on each side, trees compared from the root, keys
    listed only under mismatching leaves, those classified."""
    bound_keys = [order_key(b) for b in bounds]

    def side(docs: Mapping[Key, Mapping[str, Any]]) -> list[LeafHash]:
        return leaf_hashes(
            ((k, key_order(k)[0], document_hash(d)) for k, d in docs.items()), bound_keys
        )

    src, lak = side(source), side(lake)
    a = MerkleTree.build([h.hash for h in src], fanout)
    b = MerkleTree.build([h.hash for h in lak], fanout)
    leaves, compared = mismatching_leaves(a, b)
    wanted = set(leaves)

    def under(docs: Mapping[Key, Mapping[str, Any]]) -> dict[Key, Mapping[str, Any]]:
        return {k: d for k, d in docs.items() if leaf_of(bound_keys, key_order(k)[0]) in wanted}

    return Outcome(
        differences=classify(under(source), under(lake)),
        leaves=len(src),
        mismatching_leaves=len(leaves),
        nodes_compared=compared,
    )
