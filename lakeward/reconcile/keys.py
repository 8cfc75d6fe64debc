"""Key order: MongoDB's `_id` index order, computed on both sides of a reconciliation.

Leaves are contiguous ranges of that order with boundaries taken from the source. MongoDB reads
a range with `min()`/`max()` index bounds (as the snapshot does), so the order that decides which
leaf a key belongs to must be MongoDB's own cross-type BSON order. The lake stores a key as its
canonical form (`lakeward.events.canonical_key`: text plus type); `id_value` turns that back into
a BSON value of the same order, and `order_key` gives any BSON value a Python sort key that
compares as MongoDB compares `_id`s (type brackets first, then value).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import math
import uuid
from collections.abc import Mapping
from typing import Any

from bson import (
    Binary,
    Code,
    DatetimeMS,
    Decimal128,
    MaxKey,
    MinKey,
    ObjectId,
    Regex,
    Timestamp,
    json_util,
)
from bson.codec_options import CodecOptions
from bson.json_util import CANONICAL_JSON_OPTIONS

__all__ = [
    "OrderKey",
    "canonical_order_key",
    "id_value",
    "lookup_values",
    "order_key",
    "type_rank",
]

OrderKey = tuple[Any, ...]

_CODEC: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=True, tzinfo=dt.UTC)
_DECODE = CANONICAL_JSON_OPTIONS.with_options(tz_aware=True, tzinfo=dt.UTC)

# MongoDB's canonical type order (bsontypes.h, canonicalizeBSONType), as used by indexes.
_MIN_KEY, _NULL, _NUMBER, _STRING, _OBJECT, _ARRAY, _BINARY = 1, 5, 10, 15, 20, 25, 30
_OBJECT_ID, _BOOL, _DATE, _TIMESTAMP, _REGEX, _CODE, _MAX_KEY = 35, 40, 45, 47, 50, 60, 127


def type_rank(value: Any) -> int:
    """The BSON canonical type rank of a value: MongoDB orders types by it before values."""
    if isinstance(value, MinKey):
        return _MIN_KEY
    if isinstance(value, MaxKey):
        return _MAX_KEY
    if value is None:
        return _NULL
    if isinstance(value, bool):
        return _BOOL
    if isinstance(value, int | float | Decimal128):
        return _NUMBER
    if isinstance(value, Code):
        return _CODE
    if isinstance(value, str):
        return _STRING
    if isinstance(value, Mapping):
        return _OBJECT
    if isinstance(value, list | tuple):
        return _ARRAY
    if isinstance(value, bytes | uuid.UUID):  # Binary subclasses bytes
        return _BINARY
    if isinstance(value, ObjectId):
        return _OBJECT_ID
    if isinstance(value, dt.datetime | DatetimeMS):
        return _DATE
    if isinstance(value, Timestamp):
        return _TIMESTAMP
    if isinstance(value, Regex):
        return _REGEX
    raise TypeError(f"no BSON order for a {type(value).__name__}")


def order_key(value: Any) -> OrderKey:
    """A sort key that orders BSON values as MongoDB's index does.

    Numbers compare by value across int, long, double and Decimal128 (NaN first); strings by
    their UTF-8 bytes (no collation, as `_id` indexes); documents field by field (type, name,
    value); binary by length, subtype, then bytes.
    """
    rank = type_rank(value)
    if rank == _NUMBER:
        number = _as_decimal(value)
        return (rank, (0,) if number.is_nan() else (1, number))
    if rank == _STRING:
        return (rank, value.encode("utf-8", "surrogatepass"))
    if rank == _OBJECT:
        return (rank, tuple((type_rank(v), k, order_key(v)) for k, v in value.items()))
    if rank == _ARRAY:
        return (rank, tuple(order_key(v) for v in value))
    if rank == _BINARY:
        if isinstance(value, uuid.UUID):
            value = Binary(value.bytes, 4)
        subtype = value.subtype if isinstance(value, Binary) else 0
        return (rank, (len(value), subtype, bytes(value)))
    if rank == _OBJECT_ID:
        return (rank, value.binary)
    if rank == _BOOL:
        return (rank, bool(value))
    if rank == _DATE:
        millis = (
            int(value) if isinstance(value, DatetimeMS) else json_util._datetime_to_millis(value)
        )
        return (rank, millis)
    if rank == _TIMESTAMP:
        return (rank, (value.time, value.inc))
    if rank == _REGEX:
        return (rank, (value.pattern, str(value.flags)))
    if rank == _CODE:
        return (rank, str(value))
    return (rank,)  # MinKey, MaxKey, null


def canonical_order_key(key: str, key_type: str) -> OrderKey:
    """`order_key(id_value(key, key_type))`, without building the value for the common key
    types (a lake side orders every row it reads by it)."""
    if key_type == "objectId" and len(key) == 24:
        return (_OBJECT_ID, bytes.fromhex(key))
    if key_type == "string":
        return (_STRING, key.encode("utf-8", "surrogatepass"))
    return order_key(id_value(key, key_type))


def _as_decimal(value: Any) -> decimal.Decimal:
    if isinstance(value, Decimal128):
        return value.to_decimal()
    if isinstance(value, float):
        if math.isnan(value):
            return decimal.Decimal("NaN")
        return decimal.Decimal(value)  # exact: every double is a finite decimal
    return decimal.Decimal(int(value))


def id_value(key: str, key_type: str) -> Any:
    """A BSON `_id` whose canonical key is (key, key_type): the same document's `_id` up to the
    number type (MongoDB treats numerically equal `_id`s as one), so it finds the document and
    sorts where it does."""
    if key_type == "objectId":
        return ObjectId(key)
    if key_type == "string":
        return key
    if key_type == "bool":
        return key == "true"
    if key_type == "number":
        number = decimal.Decimal(key)
        if number.is_finite() and number == number.to_integral_value():
            integer = int(number)
            if -(2**63) <= integer < 2**63:
                return integer
            with contextlib.suppress(OverflowError):
                if int(float(integer)) == integer:  # a large integral double
                    return float(integer)
            with contextlib.suppress(decimal.Inexact):
                return Decimal128(number)
            return integer  # past both: orders right, though MongoDB holds no such number
        with contextlib.suppress(ValueError):
            if repr(float(key)) == key:  # a double's repr ("1.5", "1e-05", "inf", "nan")
                return float(key)
        return Decimal128(number)
    if key_type == "date":
        millis = int(key)
        try:
            return json_util._millis_to_datetime(millis, _CODEC)  # type: ignore[arg-type]
        except (OverflowError, ValueError, OSError):
            return DatetimeMS(millis)  # beyond datetime's years 1 to 9999
    if key_type.startswith("binary:"):
        return Binary(bytes.fromhex(key), int(key_type.split(":", 1)[1]))
    return json_util.loads(key, json_options=_DECODE)


def lookup_values(key: str, key_type: str) -> list[Any]:
    """The `_id` values to look a canonical key up by: a fraction's canonical text ("0.1") is
    both a double's and a Decimal128's, and those are different `_id`s to MongoDB."""
    value = id_value(key, key_type)
    if key_type == "number" and isinstance(value, float) and math.isfinite(value):
        with contextlib.suppress(decimal.InvalidOperation):
            return [value, Decimal128(key)]
    return [value]
