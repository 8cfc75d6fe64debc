"""The fast Extended JSON encoder writes what bson's json_util writes, for every BSON type."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from typing import Any

import bson
import pytest
from bson import (
    Binary,
    Code,
    DBRef,
    Decimal128,
    Int64,
    MaxKey,
    MinKey,
    ObjectId,
    Regex,
    Timestamp,
    json_util,
)
from bson.codec_options import CodecOptions
from bson.json_util import CANONICAL_JSON_OPTIONS
from bson.son import SON
from hypothesis import given, settings
from hypothesis import strategies as st

from lakeward import extjson
from lakeward.generate import Generator


def _reference(value: Any) -> Any:
    return json.loads(json_util.dumps(value, json_options=CANONICAL_JSON_OPTIONS))


def _decimals() -> st.SearchStrategy[Decimal128]:
    finite = st.builds(
        lambda sign, coefficient, exponent: Decimal128(f"{sign}{coefficient}E{exponent}"),
        st.sampled_from(["", "-"]),
        st.integers(0, 10**34 - 1),
        st.integers(-6176, 6111),
    )
    special = st.sampled_from(["NaN", "-NaN", "Infinity", "-Infinity", "0E-6176", "-0"])
    # Any 128 bits, including the non-canonical and "large coefficient" forms.
    bits = st.binary(min_size=16, max_size=16).map(Decimal128.from_bid)
    return finite | special.map(Decimal128) | bits


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.integers(-(2**63), 2**63 - 1).map(Int64)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.binary(max_size=40)
    | st.builds(Binary, st.binary(max_size=40), st.sampled_from([0, 1, 3, 4, 5, 6, 128, 255]))
    | st.uuids().map(Binary.from_uuid)
    | st.builds(ObjectId)
    | _decimals()
    | st.datetimes(
        min_value=dt.datetime(1, 1, 1),
        max_value=dt.datetime(9999, 12, 31),
        timezones=st.just(dt.UTC),
    ).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000))
    | st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30))
    | st.builds(Timestamp, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
    | st.sampled_from([MinKey(), MaxKey(), Regex("^a.*", "im"), Code("x = 1"), Code("f", {"a": 1})])
    | st.just(DBRef("c", ObjectId("5f43a1b2c3d4e5f601234567"), "db", extra=1))
)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=400)
@given(st.dictionaries(st.text(), documents, max_size=8))
def test_same_document_as_json_util(doc: dict[str, Any]) -> None:
    assert json.loads(extjson.dumps(doc)) == _reference(doc)


@given(_decimals())
def test_decimal128_written_as_bson_writes_it(value: Decimal128) -> None:
    assert extjson.to_canonical(value) == {"$numberDecimal": str(value)}


def test_generated_documents_as_pymongo_hands_them_over() -> None:
    """The generator's documents through BSON and back, tz-aware, as capture sees them."""
    generator = Generator(seed=7, mix="insert:100")
    options = CodecOptions(tz_aware=True)
    for _ in range(300):
        doc = bson.decode(bson.encode(generator.document()), codec_options=options)
        assert json.loads(extjson.dumps(doc)) == _reference(doc)


def test_rare_types_fall_back_to_json_util() -> None:
    doc = SON([("b", 1), ("a", re.compile("x", re.I)), ("d", DBRef("c", 1))])
    assert extjson.to_canonical({"s": doc}) == {"s": _reference(doc)}
    # Key order is the document's order, as BSON keeps it.
    assert list(json.loads(extjson.dumps(doc))) == ["b", "a", "d"]


def test_native_uuid_is_refused_as_json_util_refuses_it() -> None:
    """pymongo hands UUIDs over as Binary subtype 4; a native one has no canonical form."""
    with pytest.raises(ValueError, match="UuidRepresentation"):
        extjson.dumps({"u": uuid.UUID(int=5)})


def test_parses_back_to_the_same_document() -> None:
    doc = {
        "price": Decimal128("-1234567890.123456789012345678901234"),
        "born": dt.datetime(1901, 2, 3, 4, 5, 6, 789000, tzinfo=dt.UTC),
        "n": 2**31,
        "m": -(2**31),
        "ratio": 0.1,
        "text": 'grüße \u2028 "quoted"',
    }
    options = CANONICAL_JSON_OPTIONS.with_options(tz_aware=True, tzinfo=dt.UTC)
    assert json_util.loads(extjson.dumps(doc), json_options=options) == doc
    assert type(json_util.loads(extjson.dumps({"n": 2**31}))["n"]) is Int64
