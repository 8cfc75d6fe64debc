"""Reconciliation: Merkle trees over `_id` ranges show the lake matches MongoDB.

See docs/reconcile.md.

Pure parts (key order, hashes, trees, classification) live in `keys`, `hashing` and `compare`;
`normal` turns documents into the form both sides hash; `lake` and `source` read each side;
`engine` composes them for the activities.
"""

from lakeward.reconcile.compare import Difference, Key, classify, reconcile_maps
from lakeward.reconcile.hashing import FieldDiff, LeafHash, MerkleTree, document_hash

__all__ = [
    "Difference",
    "FieldDiff",
    "Key",
    "LeafHash",
    "MerkleTree",
    "classify",
    "document_hash",
    "reconcile_maps",
]
