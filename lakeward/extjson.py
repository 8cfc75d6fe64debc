"""Canonical MongoDB Extended JSON, fast.

`dumps(doc)` writes the same canonical Extended JSON as
``bson.json_util.dumps(doc, json_options=CANONICAL_JSON_OPTIONS)`` (equal once parsed; the
text differs only in whitespace and in writing non-ASCII characters as UTF-8 instead of
``\\uXXXX`` escapes), three to four times faster: the common BSON types are converted by one
type-dispatch table into plain JSON values that orjson serialises, and only rare types (Regex,
Code, DBRef, subclasses of known types, mappings other than dict) go through json_util's own
converter. Naive datetimes are taken as UTC, as BSON stores them. Capture encodes every document
it publishes with it; tests/test_extjson.py compares it with json_util over generated documents.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson
from bson import Binary, Decimal128, Int64, MaxKey, MinKey, ObjectId, Timestamp, json_util
from bson.json_util import CANONICAL_JSON_OPTIONS

__all__ = ["dumps", "to_canonical"]

_INT32_MIN, _INT32_MAX = -(2**31), 2**31
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_NAIVE = dt.datetime(1970, 1, 1)
_DEC_SPECIAL = 0x7800000000000000  # infinity or NaN in the high 64 bits
_DEC_LARGE = 0x6000000000000000  # the combination field of the "large coefficient" form
_DEC_COEFFICIENT = (1 << 113) - 1
_DEC_MAX_COEFFICIENT = 10**34


def _int(value: int) -> dict[str, str]:
    if _INT32_MIN <= value < _INT32_MAX:
        return {"$numberInt": str(value)}
    return {"$numberLong": str(value)}


def _float(value: float) -> dict[str, str]:
    if math.isfinite(value):
        return {"$numberDouble": repr(value)}
    if math.isnan(value):
        return {"$numberDouble": "NaN"}
    return {"$numberDouble": "Infinity" if value > 0 else "-Infinity"}


def _datetime(value: dt.datetime) -> dict[str, Any]:
    delta = value - (_EPOCH_NAIVE if value.tzinfo is None else _EPOCH)
    # Integer arithmetic, as BSON does: whole milliseconds, rounded towards minus infinity.
    millis = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    return {"$date": {"$numberLong": str(millis)}}


def _decimal128(value: Decimal128) -> dict[str, str]:
    """`str(value)` without bson's pure-Python digit loop: the coefficient and exponent are read
    from the 128 bits (IEEE 754-2008 BID) and formatted by the C `decimal` module."""
    bits = int.from_bytes(value.bid, "little")
    high = bits >> 64
    if high & _DEC_SPECIAL == _DEC_SPECIAL or high & _DEC_LARGE == _DEC_LARGE:
        # NaN, infinities and the "large coefficient" form (non-canonical): bson handles them.
        return {"$numberDecimal": str(value)}
    coefficient = bits & _DEC_COEFFICIENT
    if coefficient >= _DEC_MAX_COEFFICIENT:  # non-canonical coefficient: leave it to bson
        return {"$numberDecimal": str(value)}
    exponent = ((high >> 49) & 0x3FFF) - 6176
    sign = "-" if high >> 63 else ""
    return {"$numberDecimal": str(Decimal(f"{sign}{coefficient}E{exponent}"))}


def _binary(value: Binary) -> dict[str, Any]:
    return {
        "$binary": {"base64": base64.b64encode(value).decode(), "subType": f"{value.subtype:02x}"}
    }


def _bytes(value: bytes) -> dict[str, Any]:
    return {"$binary": {"base64": base64.b64encode(value).decode(), "subType": "00"}}


def _dict(value: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in value.items():
        t = type(v)
        # Strings are most values of most documents: no call for them.
        out[k] = v if t is str else _CONVERTERS.get(t, _fallback)(v)
    return out


def _list(value: list[Any]) -> list[Any]:
    return [v if type(v) is str else _CONVERTERS.get(type(v), _fallback)(v) for v in value]


def _same(value: Any) -> Any:
    return value


def _timestamp(value: Timestamp) -> dict[str, Any]:
    return {"$timestamp": {"t": value.time, "i": value.inc}}


_CONVERTERS: dict[type, Callable[[Any], Any]] = {
    str: _same,
    type(None): _same,
    bool: _same,
    dict: _dict,
    list: _list,
    tuple: _list,
    int: _int,
    float: _float,
    Int64: lambda v: {"$numberLong": str(int(v))},
    ObjectId: lambda v: {"$oid": str(v)},
    Decimal128: _decimal128,
    dt.datetime: _datetime,
    Binary: _binary,
    bytes: _bytes,
    Timestamp: _timestamp,
    MinKey: lambda _: {"$minKey": 1},
    MaxKey: lambda _: {"$maxKey": 1},
}


def _fallback(value: Any) -> Any:
    """Whatever the table does not know, converted by json_util itself (exact, slower): Regex,
    Code, DBRef, subclasses of the known types, mappings other than dict."""
    return json.loads(json_util.dumps(value, json_options=CANONICAL_JSON_OPTIONS))


def to_canonical(value: Any) -> Any:
    """`value` as plain JSON values (dict, list, str, bool, None), in canonical Extended JSON."""
    return _CONVERTERS.get(type(value), _fallback)(value)


def dumps(value: Any) -> str:
    """Canonical Extended JSON text of a BSON value (usually a document)."""
    return orjson.dumps(to_canonical(value)).decode()
