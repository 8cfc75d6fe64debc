"""The envelope: lossless round trip of every document, and `_id` keys that never collide."""

from __future__ import annotations

import datetime as dt
import math
import uuid

import orjson
import pytest
from bson import Binary, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from hypothesis import given
from hypothesis import strategies as st

from lakeward.events import (
    ChangeEvent,
    EnvelopeError,
    canonical_key,
    decode_envelope,
    encode_envelope,
    make_seq,
)

AWKWARD = {
    "_id": ObjectId("5f43a1b2c3d4e5f601234567"),
    "price": Decimal128("1234567890.123456789012345678901234"),
    "born": dt.datetime(1901, 2, 3, 4, 5, 6, 789000, tzinfo=dt.UTC),
    "far": dt.datetime(2299, 12, 31, tzinfo=dt.UTC),
    "big": Int64(2**63 - 1),
    "small": -(2**63),
    "ratio": math.inf,
    # pymongo hands UUIDs over as Binary subtype 4 (UuidRepresentation.UNSPECIFIED).
    "uuid": Binary.from_uuid(uuid.UUID("12345678-1234-5678-1234-567812345678")),
    "blob": Binary(b"\x00\x01", 128),
    "ts": Timestamp(1_700_000_000, 7),
    "re": Regex("^a.*", "i"),
    "lo": MinKey(),
    "hi": MaxKey(),
    "empty": {},
    "mixed": [1, "two", 3.5, None, {"x": []}],
}


def _event(doc: dict, op: str = "u") -> ChangeEvent:
    key, key_type = canonical_key(doc["_id"])
    return ChangeEvent(op=op, database="shop", collection="orders", key=key, key_type=key_type,
                       seq=make_seq(1_700_000_000, 3, 0), after=doc if op != "d" else None,
                       document_key={"_id": doc["_id"]})  # fmt: skip


def test_awkward_document_survives_the_envelope() -> None:
    decoded = decode_envelope(encode_envelope(_event(AWKWARD), "p", 0))
    after = decoded.after
    assert after == AWKWARD
    assert after["uuid"].subtype == 4
    assert str(after["price"]) == "1234567890.123456789012345678901234"


def test_envelope_is_debezium_shaped() -> None:
    raw = orjson.loads(encode_envelope(_event(AWKWARD), "orders-pipe", 42))
    assert raw["op"] == "u"
    assert isinstance(raw["after"], str) and raw["before"] is None
    assert raw["source"]["db"] == "shop" and raw["source"]["collection"] == "orders"
    assert raw["source"]["name"] == "orders-pipe"
    assert raw["ts_ms"] == 42


def test_delete_without_pre_image_keeps_its_key() -> None:
    decoded = decode_envelope(encode_envelope(_event({"_id": 7}, op="d"), "p", 0))
    assert (decoded.op, decoded.key, decoded.key_type, decoded.after) == ("d", "7", "number", None)


def test_debezium_delete_takes_the_id_from_the_kafka_key() -> None:
    value = orjson.dumps(
        {"op": "d", "before": None, "after": None, "seq": "0" * 24,
         "source": {"db": "shop", "collection": "orders"}}
    )  # fmt: skip
    key = orjson.dumps({"id": '{"$oid": "5f43a1b2c3d4e5f601234567"}'})
    decoded = decode_envelope(value, key)
    assert (decoded.key, decoded.key_type) == ("5f43a1b2c3d4e5f601234567", "objectId")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"op": "x"}', "op must be"),
        (b'{"op": "c", "source": {"db": "d"}}', "source.db and source.collection"),
        (b'{"op": "c", "source": {"db": "d", "collection": "c"}, "seq": "1"}', "seq must be"),
        (
            b'{"op": "c", "source": {"db": "d", "collection": "c"}, "seq": "' + b"0" * 24 + b'"}',
            "needs an 'after'",
        ),
    ],
)
def test_malformed_envelope_says_what_is_wrong(value: bytes, reason: str) -> None:
    with pytest.raises(EnvelopeError, match=reason):
        decode_envelope(value)


def test_numerically_equal_ids_share_a_key_like_mongodb_does() -> None:
    assert canonical_key(1) == canonical_key(Int64(1)) == canonical_key(1.0)
    assert canonical_key(Decimal128("1")) == canonical_key(1)


def test_lookalike_ids_of_different_types_never_collide() -> None:
    values = [
        1, "1", True, "true",
        ObjectId("5f43a1b2c3d4e5f601234567"), "5f43a1b2c3d4e5f601234567",
        {"a": 1}, '{"a": 1}', uuid.UUID(int=1), Binary(b"\x01"),
    ]  # fmt: skip
    keys = [canonical_key(v) for v in values]
    assert len(set(keys)) == len(values)


ids = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(max_size=30),
    st.binary(min_size=12, max_size=12).map(ObjectId),
    st.uuids(),
    st.floats(allow_nan=False, allow_infinity=False),
)


@given(st.lists(ids, min_size=2, max_size=2))
def test_distinct_ids_get_distinct_keys(pair: list) -> None:
    a, b = pair
    same_value = a == b and type(a) is type(b)
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in pair)
    if same_value or (numeric and a == b):
        assert canonical_key(a) == canonical_key(b)
    else:
        assert canonical_key(a) != canonical_key(b)


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
       st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))  # fmt: skip
def test_seq_order_is_cluster_time_then_position(t1, i1, p1, t2, i2, p2) -> None:
    assert (make_seq(t1, i1, p1) < make_seq(t2, i2, p2)) == ((t1, i1, p1) < (t2, i2, p2))
