"""The type factory: BSON documents -> Arrow -> the same documents, via Parquet and the envelope."""

from __future__ import annotations

import datetime as dt
import io
import math
import re
import struct
import uuid
from typing import Any

import bson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bson import DBRef, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.binary import Binary
from bson.code import Code
from bson.datetime_ms import DatetimeMS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lakeward.events import ChangeEvent, decode_envelope, encode_envelope, make_seq
from lakeward.typefactory import (
    NULLS_COLUMN,
    TypeFactoryError,
    decode_field_name,
    encode_field_name,
    from_arrow,
    infer_schema,
    merge_schemas,
    normalise,
    to_arrow,
)

# --- comparing documents exactly -------------------------------------------------------------


def comparable(value: Any) -> Any:
    """A form in which == means "the same BSON value": types tagged, NaN equal to itself,
    -0.0 different from 0.0, True different from 1, document key order ignored."""
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, Int64):
        return ("int64", int(value))
    if isinstance(value, int):
        return ("int32", value)
    if isinstance(value, float):
        return ("double", struct.pack(">d", value) if not math.isnan(value) else "nan")
    if isinstance(value, Decimal128):
        return ("decimal", value.bid)
    if isinstance(value, Code):
        scope = None if value.scope is None else comparable(dict(value.scope))
        return ("code", str(value), scope)
    if isinstance(value, str):
        return ("string", value)
    if isinstance(value, dt.datetime):
        assert value.tzinfo is not None, "datetimes come back tz-aware"
        return ("date", value.astimezone(dt.UTC).replace(tzinfo=None))
    if isinstance(value, DatetimeMS):
        return ("datetime_ms", int(value))
    if isinstance(value, Binary):
        return ("binary", value.subtype, bytes(value))
    if isinstance(value, bytes):
        return ("binary", 0, value)
    if isinstance(value, Regex):
        return ("regex", value.pattern, int(value.flags))
    if isinstance(value, DBRef):
        return ("dbref", comparable(value.as_doc().to_dict()))
    if isinstance(value, ObjectId | Timestamp | MinKey | MaxKey):
        return (type(value).__name__, value)
    if isinstance(value, dict):
        return ("document", sorted((k, comparable(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("array", [comparable(v) for v in value])
    raise AssertionError(f"unexpected {type(value).__name__}")


def assert_same_documents(actual: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert [comparable(d) for d in actual] == [comparable(d) for d in expected]


def round_trip(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return from_arrow(to_arrow(docs, infer_schema(docs)))


def parquet_round_trip(table: pa.Table) -> pa.Table:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    buffer.seek(0)
    return pq.read_table(buffer)


# --- generated BSON documents -----------------------------------------------------------------


def cstrings(max_size: int) -> st.SearchStrategy[str]:
    """Text BSON can hold where it writes a C string (keys, regex patterns): no NUL."""
    return st.text(st.characters(exclude_characters="\x00", codec="utf-8"), max_size=max_size)


# Keys MongoDB accepts (no NUL), weighted towards the ones Parquet and Delta reject.
awkward_keys = st.one_of(
    st.sampled_from(["a", "A", "b", "a.b", "$x", "x$", "with space", "_id", "", "%", "%25", "é"]),
    st.sampled_from(["%%1", "%nulls", "%empty", "%int32", "a,b", "c=d", "(x)", "{y}", "t\tab"]),
    cstrings(6),
)
# Keys the envelope's Extended JSON can carry: a key starting with "$" reads as a type wrapper
# there ({"$date": ...}), as in every Extended JSON, so the envelope tests avoid those.
envelope_keys = awkward_keys.filter(lambda k: not k.startswith("$"))

int32s = st.integers(-(2**31), 2**31 - 1)
int64s = st.integers(-(2**63), 2**63 - 1).map(Int64)
doubles = st.floats(allow_nan=True, allow_infinity=True)
decimals = st.one_of(
    st.sampled_from(["NaN", "-NaN", "Infinity", "-Infinity", "-0", "0E-6176", "1.000"]),
    st.builds(
        lambda coefficient, exponent: f"{coefficient}E{exponent}",
        st.integers(-(10**34) + 1, 10**34 - 1),
        st.integers(-6176, 6111 - 33),
    ),
).map(Decimal128)
ms_dates = st.integers(
    int(dt.datetime(1, 1, 1, tzinfo=dt.UTC).timestamp() * 1000),
    int(dt.datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=dt.UTC).timestamp() * 1000),
).map(lambda ms: dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ms))
binaries = st.one_of(
    st.binary(max_size=8),  # subtype 0 reads back as bytes, as pymongo decodes it
    st.builds(lambda b, s: Binary(b, s), st.binary(max_size=8), st.sampled_from([1, 5, 0x80])),
    st.builds(lambda u, s: Binary(u.bytes, s), st.uuids(), st.sampled_from([3, 4])),
)
regexes = st.builds(
    Regex,
    cstrings(5),
    st.sampled_from(["", "i", "m", "s", "x", "imsx", "u", "l"]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    int32s,
    int64s,
    doubles,
    decimals,
    st.text(max_size=8),
    ms_dates,
    st.builds(ObjectId, st.binary(min_size=12, max_size=12)),
    st.builds(Timestamp, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    binaries,
    regexes,
    st.builds(Code, st.text(max_size=5), st.none() | st.dictionaries(cstrings(3), int32s)),
    st.builds(
        DBRef,
        st.text(min_size=1, max_size=5),
        st.builds(ObjectId, st.binary(min_size=12, max_size=12)) | int32s | st.text(max_size=3),
        st.none() | st.text(min_size=1, max_size=5),
    ),
    st.just(MinKey()),
    st.just(MaxKey()),
)


def values(keys: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),  # arrays: empty, mixed, nested
            st.dictionaries(keys, inner, max_size=4),  # documents: empty and nested
        ),
        max_leaves=12,
    )


def documents(keys: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(keys, values(keys), max_size=5)


def batches(keys: st.SearchStrategy[str]) -> st.SearchStrategy[list[dict[str, Any]]]:
    return st.lists(documents(keys), min_size=1, max_size=4)


PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- properties -------------------------------------------------------------------------------


@PROPERTY
@given(batches(awkward_keys))
def test_documents_come_back_equal_after_arrow(docs: list[dict[str, Any]]) -> None:
    assert_same_documents(round_trip(docs), [normalise(d) for d in docs])


@PROPERTY
@given(batches(awkward_keys))
def test_documents_come_back_equal_after_parquet(docs: list[dict[str, Any]]) -> None:
    table = to_arrow(docs, infer_schema(docs))
    read = parquet_round_trip(table)
    assert read.schema.equals(table.schema)
    assert_same_documents(from_arrow(read), [normalise(d) for d in docs])


@PROPERTY
@given(batches(awkward_keys))
def test_bson_round_trip_then_factory_equals(docs: list[dict[str, Any]]) -> None:
    decoded = [bson.decode(bson.encode(d)) for d in docs]
    assert_same_documents(round_trip(decoded), [normalise(d) for d in docs])


@PROPERTY
@given(st.lists(documents(envelope_keys), min_size=1, max_size=4))
def test_documents_through_the_envelope_come_back_equal(docs: list[dict[str, Any]]) -> None:
    after = []
    for n, doc in enumerate(docs):
        event = ChangeEvent(
            op="c",
            database="shop",
            collection="orders",
            key=str(n),
            key_type="number",
            seq=make_seq(1, 1, n),
            after={"_id": n, **doc},
        )
        decoded = decode_envelope(encode_envelope(event, "p", 0))
        assert decoded.after is not None
        after.append(decoded.after)
    expected = [normalise({"_id": n, **doc}) for n, doc in enumerate(docs)]
    read = from_arrow(parquet_round_trip(to_arrow(after, infer_schema(after))))
    assert_same_documents(read, expected)


@PROPERTY
@given(st.text(st.characters(exclude_characters="\x00", codec="utf-8"), max_size=12))
def test_field_names_decode_back_and_are_safe(name: str) -> None:
    encoded = encode_field_name(name)
    assert decode_field_name(encoded) == name
    assert encoded
    assert not set(encoded) & set(" ,;{}()\n\t=.$")
    assert not any(ord(c) < 0x20 for c in encoded)


@PROPERTY
@given(st.lists(batches(awkward_keys), min_size=2, max_size=3))
def test_batches_merge_and_the_merged_schema_holds_every_batch(
    batch_list: list[list[dict[str, Any]]],
) -> None:
    schema = None
    for docs in batch_list:
        result = merge_schemas(schema, infer_schema(docs))
        if not result.ok:
            # A conflict is real: the batch cannot be written with the merged schema.
            conflict = result.conflicts[0]
            assert conflict.existing != conflict.incoming
            with pytest.raises(TypeFactoryError):
                to_arrow(docs, result.schema)
            return
        schema = result.schema
        table = to_arrow(docs, schema)
        assert table.schema.equals(schema)
        read = from_arrow(parquet_round_trip(table))
        # Widening may turn an int32 into an Int64 or a double, by value never by more.
        assert len(read) == len(docs)


# --- edge cases -------------------------------------------------------------------------------


def test_nan_infinities_and_negative_zero_are_kept() -> None:
    docs = [{"x": math.nan}, {"x": math.inf}, {"x": -math.inf}, {"x": -0.0}, {"x": 0.0}]
    schema = infer_schema(docs)
    assert schema.field("x").type == pa.float64()
    back = from_arrow(parquet_round_trip(to_arrow(docs, schema)))
    assert math.isnan(back[0]["x"])
    assert back[1]["x"] == math.inf and back[2]["x"] == -math.inf
    assert math.copysign(1.0, back[3]["x"]) == -1.0
    assert math.copysign(1.0, back[4]["x"]) == 1.0


@pytest.mark.parametrize(
    "text",
    [
        "1234567890123456789012345678901234",  # 34 digits
        "-9.999999999999999999999999999999999E+6144",  # the largest magnitude
        "1E-6176",  # the smallest exponent
        "1.000000000000000000000000000000000E-6143",
        "1.00",  # trailing zeros are part of the value's identity in Decimal128
        "-0",
        "-0E+3",
        "NaN",
        "Infinity",
        "-Infinity",
    ],
)
def test_decimal128_keeps_every_digit_and_exponent(text: str) -> None:
    value = Decimal128(text)
    (back,) = from_arrow(parquet_round_trip(to_arrow([{"d": value}], infer_schema([{"d": value}]))))
    assert isinstance(back["d"], Decimal128)
    assert back["d"].bid == value.bid
    assert str(back["d"]) == str(value)


@pytest.mark.parametrize(
    "when",
    [
        dt.datetime(1, 1, 1, tzinfo=dt.UTC),
        dt.datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=dt.UTC),
        dt.datetime(1900, 6, 15, 12, 0, 0, 1000, tzinfo=dt.UTC),
        dt.datetime(2262, 4, 12, tzinfo=dt.UTC),  # past the nanosecond timestamp's end
        dt.datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=dt.UTC),
    ],
)
def test_dates_before_1970_and_far_ahead_are_kept(when: dt.datetime) -> None:
    docs = [{"at": when}]
    schema = infer_schema(docs)
    assert schema.field("at").type == pa.timestamp("us", tz="UTC")
    (back,) = from_arrow(parquet_round_trip(to_arrow(docs, schema)))
    assert back["at"] == when
    assert back["at"].tzinfo is not None


def test_dates_beyond_pythons_datetime_come_back_as_datetime_ms() -> None:
    # BSON dates run to +-292 million years; Delta's microsecond timestamps to +-292 thousand.
    ms = (
        (dt.datetime(9999, 12, 31, tzinfo=dt.UTC) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC))
        // (dt.timedelta(milliseconds=1))
        * 3
    )
    docs = [{"at": DatetimeMS(ms)}, {"at": DatetimeMS(-ms)}]
    back = from_arrow(parquet_round_trip(to_arrow(docs, infer_schema(docs))))
    assert back == [{"at": DatetimeMS(ms)}, {"at": DatetimeMS(-ms)}]


def test_date_outside_deltas_timestamp_is_refused_with_its_path() -> None:
    docs = [{"when": {"at": DatetimeMS(2**62)}}]
    with pytest.raises(TypeFactoryError, match=r"when\.at") as raised:
        to_arrow(docs, infer_schema(docs))
    assert raised.value.path == "when.at"


def test_naive_and_sub_millisecond_datetimes_normalise_as_bson_stores_them() -> None:
    docs = [{"at": dt.datetime(2024, 5, 1, 12, 0, 0, 123999)}]
    (back,) = round_trip(docs)
    assert back["at"] == dt.datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=dt.UTC)
    assert back == bson.decode(bson.encode(docs[0]), bson.CodecOptions(tz_aware=True))


def test_int32_and_int64_stay_apart_at_their_limits() -> None:
    docs = [
        {"small": -(2**31), "big": Int64(-(2**63))},
        {"small": 2**31 - 1, "big": Int64(2**63 - 1)},
        {"small": 0, "big": 2**31},  # a Python int past int32 is an int64, as BSON encodes it
    ]
    schema = infer_schema(docs)
    assert schema.field("small").type == pa.int32()
    assert schema.field("big").type == pa.int64()
    back = from_arrow(parquet_round_trip(to_arrow(docs, schema)))
    assert [type(d["small"]) for d in back] == [int, int, int]
    assert [type(d["big"]) for d in back] == [Int64, Int64, Int64]
    assert [d["big"] for d in back] == [-(2**63), 2**63 - 1, 2**31]


def test_int32_and_int64_in_one_field_become_a_variant_and_keep_their_types() -> None:
    docs = [{"n": 1}, {"n": Int64(1)}]
    schema = infer_schema(docs)
    assert [f.name for f in schema.field("n").type] == ["%int32", "%int64"]
    back = round_trip(docs)
    assert type(back[0]["n"]) is int and type(back[1]["n"]) is Int64


def test_integer_beyond_int64_is_refused() -> None:
    with pytest.raises(TypeFactoryError, match="int64"):
        infer_schema([{"n": 2**63}])


@pytest.mark.parametrize("subtype", [3, 4])
def test_uuid_binaries_keep_their_subtype(subtype: int) -> None:
    value = Binary(uuid.UUID("12345678-1234-5678-1234-567812345678").bytes, subtype)
    (back,) = from_arrow(parquet_round_trip(to_arrow([{"u": value}], infer_schema([{"u": value}]))))
    assert isinstance(back["u"], Binary)
    assert back["u"].subtype == subtype
    assert bytes(back["u"]) == bytes(value)


def test_python_uuid_is_a_standard_subtype_4_binary() -> None:
    value = uuid.uuid4()
    (back,) = round_trip([{"u": value}])
    assert back["u"] == Binary(value.bytes, 4)


def test_dbref_minkey_maxkey_regex_code_and_timestamp_come_back_typed() -> None:
    oid = ObjectId()
    doc = {
        "ref": DBRef("users", oid, "app", note="x"),
        "ref_int": DBRef("users", Int64(7)),
        "lo": MinKey(),
        "hi": MaxKey(),
        "re": Regex("^a.b$", "imx"),
        "code": Code("function() { return x; }", {"x": Int64(3)}),
        "code_empty_scope": Code("f()", {}),
        "code_no_scope": Code("g()"),
        "ts": Timestamp(2**32 - 1, 2**32 - 1),
    }
    (back,) = from_arrow(parquet_round_trip(to_arrow([doc], infer_schema([doc]))))
    assert back["ref"] == DBRef("users", oid, "app", note="x")
    assert isinstance(back["ref_int"].id, Int64)
    assert isinstance(back["lo"], MinKey) and isinstance(back["hi"], MaxKey)
    assert back["re"].pattern == "^a.b$"
    assert back["re"].flags == re.IGNORECASE | re.MULTILINE | re.VERBOSE
    assert back["code"] == doc["code"] and isinstance(back["code"].scope["x"], Int64)
    assert back["code_empty_scope"].scope == {}
    assert back["code_no_scope"].scope is None
    assert back["ts"] == Timestamp(2**32 - 1, 2**32 - 1)


def test_objectid_is_never_mistaken_for_a_string() -> None:
    oid = ObjectId()
    docs = [{"_id": oid}, {"_id": str(oid)}]
    back = from_arrow(parquet_round_trip(to_arrow(docs, infer_schema(docs))))
    assert type(back[0]["_id"]) is ObjectId and back[0]["_id"] == oid
    assert type(back[1]["_id"]) is str and back[1]["_id"] == str(oid)


def test_bson_undefined_reads_as_null() -> None:
    # {"u": undefined}: type 0x06 has no Python value; pymongo decodes it as None, and so it
    # stays a present field with the value null.
    raw = b"\x08\x00\x00\x00\x06u\x00\x00"
    raw = len(raw).to_bytes(4, "little") + raw[4:]
    doc = bson.decode(raw)
    assert doc == {"u": None}
    table = to_arrow([doc], infer_schema([doc]))
    assert table.column(NULLS_COLUMN).to_pylist() == [["u"]]
    assert from_arrow(parquet_round_trip(table)) == [{"u": None}]


def test_null_missing_and_empty_document_stay_apart() -> None:
    docs = [{"a": None}, {}, {"a": {}}, {"a": {"b": None}}, {"a": {"b": 1}}]
    schema = infer_schema(docs)
    back = from_arrow(parquet_round_trip(to_arrow(docs, schema)))
    assert back == docs


def test_empty_documents_survive_parquet() -> None:
    docs = [{"e": {}, "deep": {"inner": {}}, "list": [{}, {}]}]
    table = to_arrow(docs, infer_schema(docs))
    # Parquet cannot write a struct without children: the placeholder child makes it writable.
    with pytest.raises(pa.ArrowNotImplementedError):
        pq.write_table(pa.table({"e": pa.array([{}], pa.struct([]))}), io.BytesIO())
    assert from_arrow(parquet_round_trip(table)) == docs


def test_empty_and_all_null_arrays_survive_parquet() -> None:
    docs = [{"xs": []}, {"xs": [None, None]}, {"xs": [[], [None]]}]
    back = from_arrow(parquet_round_trip(to_arrow(docs, infer_schema(docs))))
    assert back == docs


def test_mixed_arrays_keep_each_elements_type() -> None:
    oid = ObjectId()
    doc = {"mix": [1, Int64(2), 3.5, "four", None, {"five": 5}, [6], oid, True, Decimal128("7")]}
    schema = infer_schema([doc])
    element = schema.field("mix").type.value_type
    assert [f.name for f in element] == [
        "%int32",
        "%int64",
        "%double",
        "%decimal",
        "%string",
        "%bool",
        "%objectId",
        "%document",
        "%array",
    ]
    (back,) = from_arrow(parquet_round_trip(to_arrow([doc], schema)))
    assert_same_documents([back], [doc])


@pytest.mark.parametrize(
    ("key", "encoded"),
    [
        ("price", "price"),
        ("_id", "_id"),
        ("createdAt", "createdAt"),
        ("a.b", "a%2Eb"),
        ("$set", "%24set"),
        ("with space", "with%20space"),
        ("100%", "100%25"),
        ("x=1;y", "x%3D1%3By"),
        ("", "%%0"),
        ("é", "é"),
    ],
)
def test_field_name_rule_examples(key: str, encoded: str) -> None:
    assert encode_field_name(key) == encoded
    assert decode_field_name(encoded) == key


def test_awkward_keys_become_columns_and_come_back() -> None:
    doc = {"a.b": 1, "$x": 2, "with space": 3, "A": 4, "a": 5, "": 6, "%nulls": 7, "%25": 8}
    schema = infer_schema([doc])
    names = [f.name for f in schema]
    expected = ["a%2Eb", "%24x", "with%20space", "A", "a%%1", "%%0", "%25nulls", "%2525"]
    assert names == [*expected, NULLS_COLUMN]
    assert len({n.casefold() for n in names}) == len(names)
    (back,) = from_arrow(parquet_round_trip(to_arrow([doc], schema)))
    assert back == doc


def test_case_only_duplicates_nested_and_in_arrays() -> None:
    docs = [{"d": {"Key": 1, "key": "x", "KEY": 2.0}, "l": [{"n": 1, "N": 2}]}]
    schema = infer_schema(docs)
    inner = [f.name for f in schema.field("d").type]
    assert inner == ["Key", "key%%1", "KEY%%2"]
    assert from_arrow(parquet_round_trip(to_arrow(docs, schema))) == docs


def test_a_value_that_does_not_fit_names_its_path_and_is_not_cast() -> None:
    schema = infer_schema([{"order": {"items": [{"qty": 1}]}}])
    with pytest.raises(TypeFactoryError, match=r"order\.items\[\]\.qty.*double") as raised:
        to_arrow([{"order": {"items": [{"qty": 1.9}]}}], schema)
    assert raised.value.path == "order.items[].qty"
    with pytest.raises(TypeFactoryError, match="string"):
        to_arrow([{"order": {"items": [{"qty": "40"}]}}], schema)


def test_a_key_without_a_column_is_refused() -> None:
    schema = infer_schema([{"a": 1}])
    with pytest.raises(TypeFactoryError, match="no column") as raised:
        to_arrow([{"a": 1, "b": {"c": 2}}], schema)
    assert raised.value.path == "b"


def test_to_arrow_checks_its_input_schema_types_exactly() -> None:
    docs = [{"a": 1}, {"a": 2}]
    table = to_arrow(docs, infer_schema(docs))
    assert table.column("a").type == pa.int32()
    assert table.column("a").to_pylist() == [1, 2]


# --- merging schemas --------------------------------------------------------------------------


def test_merge_adds_new_fields_and_nested_fields() -> None:
    existing = infer_schema([{"_id": 1, "a": {"b": 1}}])
    incoming = infer_schema([{"_id": 2, "a": {"b": 2, "c": "new"}, "d": True}])
    result = merge_schemas(existing, incoming)
    assert result.ok and result.changed
    assert result.added == ("a.c", "d")
    assert result.schema.field("a").type.field("c").type == pa.string()
    assert result.schema.names == ["_id", "a", "d", NULLS_COLUMN]
    docs = [{"_id": 3, "a": {"b": 3}}, {"_id": 4, "a": {"c": "x"}, "d": False}]
    assert from_arrow(to_arrow(docs, result.schema)) == docs


def test_merge_widens_int32_to_int64_and_old_and_new_values_fit() -> None:
    existing = infer_schema([{"n": 1}])
    incoming = infer_schema([{"n": Int64(2**40)}])
    result = merge_schemas(existing, incoming)
    assert result.ok
    assert [(w.path, w.existing, w.widened) for w in result.widened] == [
        ("n", pa.int32(), pa.int64())
    ]
    assert result.schema.field("n").type == pa.int64()
    back = from_arrow(to_arrow([{"n": 1}, {"n": Int64(2**40)}], result.schema))
    assert [int(d["n"]) for d in back] == [1, 2**40]


def test_merge_widens_int_to_double_but_refuses_an_inexact_value() -> None:
    result = merge_schemas(infer_schema([{"n": Int64(5)}]), infer_schema([{"n": 1.5}]))
    assert result.ok
    assert result.schema.field("n").type == pa.float64()
    back = from_arrow(to_arrow([{"n": Int64(2**53)}, {"n": 1.5}], result.schema))
    assert back == [{"n": float(2**53)}, {"n": 1.5}]
    with pytest.raises(TypeFactoryError, match="does not fit"):
        to_arrow([{"n": Int64(2**53 + 1)}], result.schema)


def test_merge_keeps_a_wider_column_for_narrower_values() -> None:
    result = merge_schemas(infer_schema([{"n": 1.5}]), infer_schema([{"n": 1}]))
    assert result.ok and not result.changed
    assert result.schema.field("n").type == pa.float64()


def test_merge_reports_string_versus_int_with_path_and_both_types() -> None:
    existing = infer_schema([{"order": {"lines": [{"qty": 1}]}}])
    incoming = infer_schema([{"order": {"lines": [{"qty": "one"}]}}])
    result = merge_schemas(existing, incoming)
    assert not result.ok
    (conflict,) = result.conflicts
    assert conflict.path == "order.lines[].qty"
    assert conflict.existing == pa.int32()
    assert conflict.incoming == pa.string()
    assert "order.lines[].qty" in str(conflict)
    # The merged schema keeps the existing type where it conflicts.
    qty = result.schema.field("order").type.field("lines").type.value_type.field("qty")
    assert qty.type == pa.int32()


def test_merge_grows_a_variant_with_a_new_kind() -> None:
    existing = infer_schema([{"_id": ObjectId()}])
    result = merge_schemas(existing, infer_schema([{"_id": "text"}]))
    assert result.ok
    assert result.added == ("_id<string>",)
    assert [f.name for f in result.schema.field("_id").type] == ["%objectId", "%string"]


def test_merge_fills_an_array_that_was_only_ever_empty() -> None:
    result = merge_schemas(infer_schema([{"xs": []}]), infer_schema([{"xs": [1, 2]}]))
    assert result.ok
    docs = [{"xs": []}, {"xs": [1, 2]}]
    assert from_arrow(parquet_round_trip(to_arrow(docs, result.schema))) == docs


def test_merge_names_a_new_case_only_duplicate_without_renaming_the_old_column() -> None:
    existing = infer_schema([{"name": 1}])
    incoming = infer_schema([{"Name": 2}])
    result = merge_schemas(existing, incoming)
    assert result.ok
    assert result.schema.names[:2] == ["name", "Name%%1"]
    docs = [{"name": 1}, {"Name": 2}]
    assert from_arrow(to_arrow(docs, result.schema)) == docs


def test_merge_accepts_a_schema_read_back_with_large_types() -> None:
    existing = infer_schema([{"s": "x", "l": ["y"]}])
    large = pa.schema(
        [
            pa.field("s", pa.large_string()),
            pa.field("l", pa.large_list(pa.large_string())),
            pa.field(NULLS_COLUMN, pa.large_list(pa.large_string())),
        ]
    )
    result = merge_schemas(large, existing)
    assert result.ok and not result.changed
    table = to_arrow([{"s": "z", "l": ["w"]}], large)
    assert from_arrow(table.cast(large)) == [{"s": "z", "l": ["w"]}]


def test_merge_with_no_table_yet_is_the_incoming_schema() -> None:
    incoming = infer_schema([{"a": 1}])
    result = merge_schemas(None, incoming)
    assert result.schema.equals(incoming) and result.ok


def test_a_decimal_variant_takes_integers_exactly() -> None:
    existing = infer_schema([{"price": Decimal128("9.99")}])
    result = merge_schemas(existing, infer_schema([{"price": Int64(10)}]))
    assert result.ok
    assert result.added == ("price<int64>",)
    # Written with the table's schema before merging, an integer goes into %decimal exactly.
    (back,) = from_arrow(to_arrow([{"price": 2**62}], existing))
    assert back == {"price": Decimal128(str(2**62))}


def test_a_double_column_does_not_take_a_decimal() -> None:
    result = merge_schemas(infer_schema([{"x": 1.5}]), infer_schema([{"x": Decimal128("1.5")}]))
    assert [c.path for c in result.conflicts] == ["x"]
    with pytest.raises(TypeFactoryError, match=r"^x: a decimal value"):
        to_arrow([{"x": Decimal128("1.5")}], infer_schema([{"x": 1.5}]))
