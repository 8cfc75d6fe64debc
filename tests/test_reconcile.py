"""Reconciliation's pure parts: key order, hashes, trees, classification (no servers)."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

from bson import Binary, Decimal128, Int64, MaxKey, MinKey, ObjectId
from hypothesis import given, settings
from hypothesis import strategies as st

from lakeward.events import canonical_key
from lakeward.reconcile.compare import CHANGED, EXTRA, MISSING, reconcile_maps
from lakeward.reconcile.hashing import MerkleTree, document_hash, field_diffs, mismatching_leaves
from lakeward.reconcile.keys import canonical_order_key, id_value, order_key
from lakeward.reconcile.normal import lake_documents, one_by_one, source_documents


def test_key_order_brackets_types_as_mongodb_does() -> None:
    ordered = [
        MinKey(), None, float("nan"), -5, 1, Int64(2), 2.5, Decimal128("3"), "", "a", "b",
        {"a": 1}, Binary(b"\x00", 0), Binary(b"\x00\x00", 0), ObjectId("0" * 24),
        ObjectId("f" * 24), False, True, dt.datetime(2020, 1, 1, tzinfo=dt.UTC), MaxKey(),
    ]  # fmt: skip
    keys = [order_key(v) for v in ordered]
    assert keys == sorted(keys)
    assert order_key(1) == order_key(1.0) == order_key(Int64(1)) == order_key(Decimal128("1"))


def test_canonical_keys_come_back_in_the_same_order() -> None:
    values: list[Any] = [
        -(2**40), -1.5, 0, 7, 10, 2**62, 1e300, "x", "y", ObjectId(), True,
        dt.datetime(1999, 5, 4, 3, 2, 1, 5000, tzinfo=dt.UTC), Binary(b"ab", 4), {"k": 1},
    ]  # fmt: skip
    for value in values:
        assert order_key(id_value(*canonical_key(value))) == order_key(value), value


def test_document_hash_ignores_field_order_and_sees_types() -> None:
    assert document_hash({"a": 1, "b": {"x": 1, "y": 2}}) == document_hash(
        {"b": {"y": 2, "x": 1}, "a": 1}
    )
    assert document_hash({"a": 1}) != document_hash({"a": Int64(1)})
    assert document_hash({"a": 1}) != document_hash({"a": 1.0})
    assert document_hash({"a": 1}) != document_hash({"a": "1"})
    assert document_hash({"a": None}) != document_hash({})


def test_field_diffs_name_the_path_and_both_values() -> None:
    diffs = field_diffs(
        {"a": {"b": [1, 2]}, "c": "x", "d": 1}, {"a": {"b": [1, 3]}, "c": 5, "e": True}
    )
    assert [(d.path, d.source, d.lake) for d in diffs] == [
        ("a.b.1", '{"$numberInt": "2"}', '{"$numberInt": "3"}'),
        ("c", '"x"', '{"$numberInt": "5"}'),
        ("d", '{"$numberInt": "1"}', None),
        ("e", None, "true"),
    ]


def test_tree_descends_only_into_mismatching_subtrees() -> None:
    leaves = [f"{i:032x}" for i in range(4096)]
    changed = list(leaves)
    changed[1234] = "f" * 32
    a, b = MerkleTree.build(leaves), MerkleTree.build(changed)
    found, compared = mismatching_leaves(a, b)
    assert found == [1234]
    assert compared <= 1 + 16 * 3  # one path down: 16 children per level, 3 levels below root
    assert mismatching_leaves(a, MerkleTree.build(leaves)) == ([], 1)


def test_widened_column_hashes_as_the_lake_holds_it() -> None:
    """A source int32 in a column the table widened to double is stored as a double: equal."""
    import pyarrow as pa

    from lakeward.delta.table import CURRENT_STATE_SCHEMA

    schema = pa.schema([*CURRENT_STATE_SCHEMA, pa.field("n", pa.float64())])
    (normal,) = source_documents([{"_id": 1, "n": 5}], schema)
    assert normal is not None and normal["n"] == 5.0 and isinstance(normal["n"], float)
    assert one_by_one([{"_id": 1, "n": 5}], schema) == [normal]
    assert lake_documents  # the lake side reads rows with the same factory


# Keys of several BSON types, so leaves cross type brackets.
_ids = st.one_of(
    st.integers(-(10**6), 10**6),
    st.text(alphabet="abcxyz", min_size=0, max_size=4),
    st.binary(min_size=12, max_size=12).map(ObjectId),
    st.floats(-1e6, 1e6, allow_nan=False).filter(lambda f: not f.is_integer()),
)
_values = st.one_of(st.integers(-5, 5), st.text(max_size=3), st.none(), st.booleans())


@settings(max_examples=150, deadline=None)
@given(
    ids=st.lists(_ids, min_size=0, max_size=120, unique_by=lambda v: canonical_key(v)),
    extra_ids=st.lists(_ids, max_size=10),
    seed=st.integers(0, 2**32),
    leaf_size=st.integers(1, 20),
)
def test_reported_differences_are_the_true_differences(
    ids: list[Any], extra_ids: list[Any], seed: int, leaf_size: int
) -> None:
    rnd = random.Random(seed)
    source = {canonical_key(i): {"_id": i, "v": rnd.randint(0, 3), "n": {"x": 1}} for i in ids}
    lake: dict[Any, dict[str, Any]] = {k: dict(d) for k, d in source.items()}
    truth: dict[Any, str] = {}
    for key in list(lake):
        edit = rnd.random()
        if edit < 0.1:
            del lake[key]
            truth[key] = MISSING
        elif edit < 0.2:
            lake[key]["v"] = rnd.choice(["changed", 99, None, 1.5])
            truth[key] = CHANGED
        elif edit < 0.25:
            lake[key]["n"] = {"x": Int64(1)}  # a type change deep inside
            truth[key] = CHANGED
    for value in extra_ids:
        key = canonical_key(value)
        if key not in source:
            lake[key] = {"_id": value, "v": 0}
            truth[key] = EXTRA
    # Boundaries from the source, as the planner samples them: every leaf_size-th key.
    ordered = sorted(ids, key=order_key)
    bounds = ordered[leaf_size::leaf_size]

    found = reconcile_maps(source, lake, bounds)

    assert {(d.key, d.key_type): d.kind for d in found.differences} == truth
    for d in found.differences:
        if d.kind == CHANGED:
            assert d.fields and all(f.source != f.lake for f in d.fields)
    if not truth:
        assert found.mismatching_leaves == 0


def test_row_groups_outside_a_range_are_skipped_by_their_statistics() -> None:
    from lakeward.reconcile.lake import _keys_may_be_in, _range_may_hold

    def stats(kind: str, low: str, high: str) -> dict[str, Any]:
        return {"_id_type": {"min": kind, "max": kind}, "_id": {"min": low, "max": high}}

    low, high = ObjectId("1" * 24), ObjectId("5" * 24)
    may_hold = _range_may_hold(low, high)
    assert may_hold(stats("objectId", "2" * 24, "3" * 24))
    assert not may_hold(stats("objectId", "0" * 24, "0" + "f" * 23))  # all below
    assert not may_hold(stats("objectId", "5" * 24, "9" * 24))  # all at or above the upper
    assert not may_hold(stats("number", "1", "9"))  # numbers sort before ObjectIds
    assert may_hold({"_id_type": {"min": "number", "max": "objectId"}, "_id": {}})  # mixed
    assert _range_may_hold(5, None)(stats("objectId", "0" * 24, "1" * 24))
    assert _keys_may_be_in(["b", "x"], stats("string", "a", "c"))
    assert not _keys_may_be_in(["d", "x"], stats("string", "a", "c"))


def test_the_lake_sides_order_keys_equal_those_of_the_values() -> None:
    values: list[Any] = [
        ObjectId(), ObjectId("0" * 24), "", "abc", "é", "\U0001f600", 1, 1.5,
        Decimal128("2.5"), True, dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
    ]  # fmt: skip
    for value in values:
        key = canonical_key(value)
        assert canonical_order_key(*key) == order_key(id_value(*key)), value
