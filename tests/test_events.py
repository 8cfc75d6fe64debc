"""The envelope: lossless round trip of every document, and `_id` keys that never collide."""

from __future__ import annotations

import datetime as dt
import math
import uuid

import orjson
import pytest
from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from hypothesis import given
from hypothesis import strategies as st

from lakeward.events import (
    ChangeEvent,
    EnvelopeError,
    NotAChangeError,
    canonical_key,
    decode_envelope,
    document_json,
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


# ---- Debezium's MongoDB connector (3.6.1.Final, JsonConverter without schemas) ----------------
# Shapes copied from records the real connector wrote in the local stack (docs/debezium.md).

_LSID = (
    '{"id": {"$binary": "7UNh6kl3SdiOu7OJLb4rSA==","$type": "04"},'
    '"uid": {"$binary": "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=","$type": "00"}}'
)


def _debezium(op: str, after: str | None, *, ord_: int = 2, ts_ms: int = 1_795_715_563_123,
              total_order: int | None = None) -> bytes:  # fmt: skip
    transaction = None
    if total_order is not None:
        transaction = {"id": f"{_LSID}:10", "total_order": total_order,
                       "data_collection_order": total_order}  # fmt: skip
    return orjson.dumps(
        {
            "before": None,
            "after": after,
            "updateDescription": None,
            "source": {
                "version": "3.6.1.Final", "connector": "mongodb", "name": "dbz", "ts_ms": ts_ms,
                "snapshot": "false", "db": "shop", "sequence": None, "ts_us": ts_ms * 1000,
                "ts_ns": ts_ms * 1_000_000, "collection": "orders", "ord": ord_,
                "lsid": _LSID if transaction else None, "txnNumber": 10 if transaction else None,
                "wallTime": ts_ms,
            },
            "op": op,
            "ts_ms": ts_ms + 40,
            "transaction": transaction,
        }
    )  # fmt: skip


#: `after` as Debezium writes it: the Java driver's legacy "strict" JSON mode.
_STRICT_AFTER = (
    '{"_id": 1,"i32": 5,"i64": {"$numberLong": "7"},"d": 1.0,"d2": 2.5,"inf": Infinity,'
    '"negz": -0.0,"dec": {"$numberDecimal": "1.10"},"date": {"$date": -2177452800000},'
    '"bin": {"$binary": "AAE=","$type": "00"},'
    '"uuid": {"$binary": "AAAAAAAAAAAAAAAAAAAABQ==","$type": "04"},'
    '"oid": {"$oid": "6b0871eb7b943bdd99a39ed0"},"re": {"$regex": "^a","$options": "i"},'
    '"ts": {"$timestamp": {"t": 5,"i": 6}},"mn": {"$minKey": 1},"mx": {"$maxKey": 1},'
    '"code": {"$code": "x=1"},"big": 1.0E20,"small": 1.0E-7,"nan": NaN}'
)


def test_debezium_strict_json_keeps_every_bson_type() -> None:
    from bson import Code

    event = decode_envelope(_debezium("c", _STRICT_AFTER), b'{"id":"1"}')
    expected = {
        "_id": 1, "i32": 5, "i64": Int64(7), "d": 1.0, "d2": 2.5, "inf": math.inf, "negz": -0.0,
        "dec": Decimal128("1.10"), "date": dt.datetime(1901, 1, 1, tzinfo=dt.UTC),
        "bin": Binary(b"\x00\x01", 0), "uuid": Binary(uuid.UUID(int=5).bytes, 4),
        "oid": ObjectId("6b0871eb7b943bdd99a39ed0"), "re": Regex("^a", "i"),
        "ts": Timestamp(5, 6), "mn": MinKey(), "mx": MaxKey(), "code": Code("x=1"),
        "big": 1e20, "small": 1e-7, "nan": math.nan,
    }  # fmt: skip
    # Compare the canonical form apply stores: it tells int32, int64 and double apart.
    assert document_json(event.after) == document_json(expected)
    assert (event.op, event.key, event.key_type) == ("c", "1", "number")


def test_debezium_seq_comes_from_cluster_time_and_transaction_position() -> None:
    plain = decode_envelope(_debezium("c", '{"_id": 1}', ord_=7, ts_ms=1_795_715_563_999))
    assert plain.seq == make_seq(1_795_715_563, 7, 0)
    assert plain.source_ts_ms == 1_795_715_563_999
    third = decode_envelope(_debezium("u", '{"_id": 1}', ord_=11, total_order=3))
    assert third.seq == make_seq(1_795_715_563, 11, 2)
    assert third.txn_number == 10
    assert third.lsid is not None and third.lsid["id"].subtype == 4


def test_debezium_snapshot_row_is_older_than_changes_after_its_read() -> None:
    # As the connector writes snapshot rows: no cluster time (ord -1), ts_ms = when it read.
    value = orjson.loads(_debezium("r", '{"_id": 2}', ord_=-1, ts_ms=1_795_716_856_547))
    value["source"].update(snapshot="last", wallTime=None)
    row = decode_envelope(orjson.dumps(value))
    assert row.seq == make_seq(1_795_716_856, 0, 0)
    change_in_that_second = decode_envelope(_debezium("u", '{"_id": 2}', ord_=1,
                                                      ts_ms=1_795_716_856_000))  # fmt: skip
    assert change_in_that_second.seq > row.seq
    with pytest.raises(EnvelopeError, match="cannot derive seq"):
        decode_envelope(_debezium("u", '{"_id": 2}', ord_=-1))


def test_debezium_delete_takes_its_id_from_the_relaxed_json_key() -> None:
    keys = {
        b'{"id":"{\\"$date\\": \\"2020-01-01T00:00:00Z\\"}"}': dt.datetime(2020, 1, 1,
                                                                             tzinfo=dt.UTC),
        b'{"id":"1099511627776"}': Int64(2**40),
        b'{"id":"\\"t1\\""}': "t1",
        b'{"id":"{\\"$binary\\": {\\"base64\\": \\"AAAAAAAAAAAAAAAAAAAACQ==\\",'
        b'\\"subType\\": \\"04\\"}}"}': Binary(uuid.UUID(int=9).bytes, 4),
        # Relaxed JSON drops NumberLong inside a compound _id; MongoDB compares it by value too.
        b'{"id":"{\\"k\\": 1,\\"j\\": \\"x\\"}"}': {"k": Int64(1), "j": "x"},
    }  # fmt: skip
    for kafka_key, real_id in keys.items():
        event = decode_envelope(_debezium("d", None), kafka_key)
        assert (event.op, event.after) == ("d", None)
        assert (event.key, event.key_type) == canonical_key(real_id), kafka_key


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (None, "tombstone"),
        (b"", "tombstone"),
        (b'{"ts_ms":1795715428167}', "heartbeat"),
        (b'{"status":"BEGIN","id":"x:10","event_count":null,"data_collections":null,"ts_ms":1}',
         "transaction_metadata"),
        (b'{"status":"END","id":"x:10","event_count":4,"data_collections":[],"ts_ms":1}',
         "transaction_metadata"),
        (_debezium("u", None), "update_without_document"),
    ],
)  # fmt: skip
def test_debezium_records_that_are_not_changes_say_so(value: bytes | None, kind: str) -> None:
    with pytest.raises(NotAChangeError) as caught:
        decode_envelope(value, b'{"id":"1"}')
    assert caught.value.kind == kind
    assert isinstance(caught.value, EnvelopeError)  # unknown to a consumer: dead-lettered


def test_debezium_record_without_cluster_time_is_malformed() -> None:
    value = orjson.dumps(
        {"op": "c", "after": '{"_id": 1}', "source": {"db": "d", "collection": "c"}}
    )
    with pytest.raises(EnvelopeError, match="seq is missing"):
        decode_envelope(value)


def test_schema_wrapped_debezium_value_is_read_too() -> None:
    wrapped = orjson.dumps(
        {"schema": {"type": "struct"}, "payload": orjson.loads(_debezium("c", '{"_id": 1}'))}
    )
    assert decode_envelope(wrapped).key == "1"


def test_numbers_inside_compound_ids_are_keyed_by_value_like_mongodb() -> None:
    same = [{"a": 1, "b": "x"}, {"a": Int64(1), "b": "x"}, {"a": 1.0, "b": "x"},
            {"a": Decimal128("1"), "b": "x"}]  # fmt: skip
    assert len({canonical_key(v) for v in same}) == 1
    assert canonical_key({"a": 1, "b": "x"}) != canonical_key({"b": "x", "a": 1})
    assert canonical_key({"a": [1, 2]}) != canonical_key({"a": [2, 1]})
    assert canonical_key({"a": True}) != canonical_key({"a": 1})
    assert canonical_key({"a": 1.5}) != canonical_key({"a": 1})


def test_lakeward_envelope_keeps_transaction_identity() -> None:
    lsid = {"id": Binary(uuid.UUID(int=3).bytes, 4), "uid": Binary(b"\x01" * 32, 0)}
    event = ChangeEvent(op="c", database="shop", collection="orders", key="1",
                        key_type="number", seq=make_seq(1, 2, 3), after={"_id": 1}, lsid=lsid,
                        txn_number=4)  # fmt: skip
    decoded = decode_envelope(encode_envelope(event, "p", 0))
    assert decoded.lsid is not None
    assert document_json(decoded.lsid) == document_json(lsid)
    assert (decoded.txn_number, decoded.seq) == (4, make_seq(1, 2, 3))


def test_keys_of_numbers_past_decimal128_and_of_code_never_collide() -> None:
    """Found by the type factory's property test: these raised, or met another value's key."""
    big = 1.0000000000000001e34  # its exact value has 41 significant digits
    assert canonical_key(Decimal128("1E+4300")) == ("1" + "0" * 4300, "number")
    keys = {
        canonical_key({"a": [big]}),
        canonical_key({"a": [Decimal128("1.000000000000000060867381447727514E+34")]}),
        canonical_key({"a": [Code("lakeward:number:" + canonical_key(big)[0])]}),
        canonical_key({"a": Decimal128("1E+6000")}),
        canonical_key(Code("x")),
        canonical_key("x"),
    }
    assert len(keys) == 6
    # Numerically equal values still share a key, inside documents too.
    assert canonical_key({"a": Decimal128("1E+40")}) == canonical_key({"a": Decimal128("10E+39")})
    assert canonical_key({"a": 2.0, "b": 2.0**100}) == canonical_key(
        {"a": Int64(2), "b": Decimal128(str(2**100))}
    )
