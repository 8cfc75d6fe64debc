"""The BSON <-> Arrow type factory: every BSON type to an Arrow type and back, losslessly.

One place decides how a MongoDB document becomes an Arrow row and how the row becomes the same
document again (docs/types.md has the mapping table and the reasoning). Apply calls it once per
micro-batch::

    schema = infer_schema(docs)                      # what this batch holds
    merged = merge_schemas(table_schema, schema)     # report: added, widened, conflicts
    table = to_arrow(docs, merged.schema)            # raises TypeFactoryError naming the path
    ...
    docs_again = from_arrow(table)                   # == [normalise(d) for d in docs]

Invariants:

* Every conversion is decided here: `to_arrow` builds every column in its final Arrow type, so
  nothing leans on deltalake's silent casts (a double 1.9 into an int64 column becomes 1). A
  value that does not fit its column raises; nothing is rounded or truncated.
* Every Arrow type used is one Delta Lake can store (no null type, no unsigned or fixed-size
  types, no empty structs, timestamps in microseconds) and every field name is one Delta and
  Parquet accept, so what Delta hands back decodes without side information: the BSON type of
  a column is told by its Arrow type and by reserved child names, never by schema metadata.
* `from_arrow(to_arrow(docs, s)) == [normalise(d) for d in docs]` for any schema `s` that
  `infer_schema(docs)` returned. Normalising changes only what BSON or pymongo cannot tell apart
  anyway (undefined reads as null, sub-millisecond datetimes) plus field order inside a
  document, which the table keeps per column, not per row.

Reserved names all start with "%" followed by a lowercase letter, which `encode_field_name`
never produces (it writes "%" only as "%XX" escapes with upper-case hex digits, or as the
"%%N" suffix), so they cannot collide with a field of the source.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from bson import (
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
from bson.binary import Binary
from bson.code import Code
from bson.datetime_ms import DatetimeMS
from bson.json_util import CANONICAL_JSON_OPTIONS, JSONOptions

__all__ = [
    "JSON_SUFFIX",
    "NULLS_COLUMN",
    "Conflict",
    "MergeResult",
    "TypeFactoryError",
    "Widening",
    "coerce",
    "decode_field_name",
    "encode_field_name",
    "from_arrow",
    "infer_schema",
    "json_column",
    "json_value",
    "merge_schemas",
    "normalise",
    "to_arrow",
]

#: Top-level column listing the paths of fields that are present with the value null (a null
#: Arrow value alone cannot tell `{"a": null}` from `{}`).
NULLS_COLUMN = "%nulls"
#: The only child of the struct of an empty document: Parquet cannot store a struct without
#: children. Always null; `from_arrow` skips it.
EMPTY_CHILD = "%empty"
#: The only child of a variant that has seen no value yet (the elements of arrays that were
#: empty or all null). Always null.
NONE_CHILD = "%none"
#: A top-level column `<name>%json` holds, for the rows where it is set, the value of the field
#: `<name>` as canonical Extended JSON: where apply's `permissive` schema policy keeps a value
#: whose type conflicts with the column `<name>`. `from_arrow` puts it back in its place.
#: `encode_field_name` writes "%" only before upper-case hex digits or "%", so no key maps to it.
JSON_SUFFIX = "%json"

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_MICROS_PER_MS = 1000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_JSON_DECODE: JSONOptions = CANONICAL_JSON_OPTIONS.with_options(tz_aware=True, tzinfo=dt.UTC)

# Kinds: the BSON types the factory tells apart. A field whose values all have one kind with a
# type of its own in Arrow ("natural" kinds) is a plain column of that type. Every other field
# is a variant: a struct with one child per kind seen, named "%<kind>", exactly one of them set
# per value. The BSON-specific kinds are always variants, so that e.g. an ObjectId (kept as its
# hex string) is never mistaken for a string once the table is read back.
_NATURAL_KINDS = ("int32", "int64", "double", "string", "bool", "date", "document", "array")
_KIND_ORDER = (
    "int32",
    "int64",
    "double",
    "decimal",
    "string",
    "bool",
    "date",
    "objectId",
    "binary",
    "timestamp",
    "regex",
    "code",
    "dbref",
    "minKey",
    "maxKey",
    "document",
    "array",
)
_TIMESTAMP = pa.timestamp("us", tz="UTC")
_LEAF_TYPES: dict[str, pa.DataType] = {
    "int32": pa.int32(),
    "int64": pa.int64(),
    "double": pa.float64(),
    # Decimal128 keeps 34 digits, an exponent from -6176 to 6111, trailing zeros, -0, NaN and
    # infinities; an Arrow/Delta decimal has one fixed scale per column and precision <= 38, so
    # only the canonical string (which Decimal128 parses back bit for bit) keeps all of it.
    "decimal": pa.string(),
    "string": pa.string(),
    "bool": pa.bool_(),
    # Delta's timestamp is microseconds since the epoch, UTC: BSON's milliseconds * 1000 fit for
    # +-292,000 years, far beyond Python's datetime (years 1 to 9999).
    "date": _TIMESTAMP,
    "objectId": pa.string(),
    # Delta has no unsigned types: subtype 0..255 and the timestamp's uint32 parts fit int32/64.
    "binary": pa.struct([("subtype", pa.int32()), ("data", pa.binary())]),
    "timestamp": pa.struct([("t", pa.int64()), ("i", pa.int64())]),
    "regex": pa.struct([("pattern", pa.string()), ("flags", pa.string())]),
    # A scope is a document of any shape; its canonical Extended JSON keeps it exactly.
    "code": pa.struct([("code", pa.string()), ("scope", pa.string())]),
    # The referenced id may be of any BSON type, so it too is canonical Extended JSON.
    "dbref": pa.struct(
        [
            ("collection", pa.string()),
            ("id", pa.string()),
            ("database", pa.string()),
            ("extra", pa.string()),
        ]
    ),
    "minKey": pa.bool_(),
    "maxKey": pa.bool_(),
}
_KIND_BY_CHILD = {f"%{kind}": kind for kind in _KIND_ORDER}
# Numeric widening: a value of a kind on the left fits a column of any kind to its right.
_NUMERIC_RANK = {"int32": 0, "int64": 1, "double": 2}
_REGEX_FLAGS = (
    ("i", re.IGNORECASE),
    ("l", re.LOCALE),
    ("m", re.MULTILINE),
    ("s", re.DOTALL),
    ("u", re.UNICODE),
    ("x", re.VERBOSE),
)


class TypeFactoryError(ValueError):
    """A value or schema the factory cannot convert; `path` names the field (``a.b[].c``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path or '<document>'}: {message}")
        self.path = path


# --- field names --------------------------------------------------------------------------

# Delta (without column mapping) and Spark's Parquet writer reject " ,;{}()\n\t="; a dot reads
# as nesting in every SQL engine; "$" breaks Hive-style engines; "%" is the escape itself.
# A backtick quotes names in the SQL delta-rs generates (its MERGE file-skipping filter).
_ESCAPED = frozenset(" ,;{}()\n\t=.$%`") | {chr(c) for c in range(0x20)} | {"\x7f"}
_SUFFIX = re.compile(r"%%(\d+)$")
_ESCAPE = re.compile(r"%([0-9A-F]{2})")


def encode_field_name(name: str) -> str:
    """The Arrow/Delta field name of a BSON key: reversible, identity for ordinary keys.

    Each character in " ,;{}()\\n\\t=.$%`" and every ASCII control character becomes "%XX" (its
    code in upper-case hex), like URL percent-encoding; the empty key becomes "%%0". Case-only
    duplicates (Delta compares names case-insensitively) are resolved per struct by a "%%N"
    suffix, see `_assign_names`. `decode_field_name` inverts both.
    """
    if not name:
        return "%%0"
    return "".join(f"%{ord(c):02X}" if c in _ESCAPED else c for c in name)


def decode_field_name(encoded: str) -> str:
    """The BSON key of an encoded field name (inverse of `encode_field_name` and suffixes)."""
    base = _SUFFIX.sub("", encoded)
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), base)


def _assign_names(names: Iterable[str], taken: Iterable[str] = ()) -> dict[str, str]:
    """Encoded names for new sibling keys, none equal to another ignoring case.

    A key keeps its plain encoding unless that collides (case-insensitively) with a name already
    taken, in which case it gets the first free "%%N" suffix, N >= 1. Names in `taken` (an
    existing table's) never change, so a table's columns stay put as new keys arrive.
    """
    used = {name.casefold() for name in taken}
    assigned: dict[str, str] = {}
    for name in names:
        base = encode_field_name(name)
        candidate, n = base, 0
        while candidate.casefold() in used:
            n += 1
            candidate = f"{base}%%{n}"
        used.add(candidate.casefold())
        assigned[name] = candidate
    return assigned


# --- normalising ----------------------------------------------------------------------------


def normalise(value: Any) -> Any:
    """The value as BSON would hand it back, which is what `from_arrow` returns.

    Python ints become int (int32 range) or Int64; Decimal128 its canonical encoding;
    datetimes become tz-aware UTC, floored to milliseconds (naive ones are taken as UTC, as
    BSON stores them; DatetimeMS outside Python's range stays DatetimeMS); Binary subtype 0 and
    bytes become bytes; uuid.UUID becomes Binary subtype 4; Regex flags become their int form;
    Code scopes, DBRef ids and nested documents/arrays are normalised recursively; mappings
    become dicts, tuples lists.
    """
    return _normalise(value, "")


def _normalise(value: Any, path: str) -> Any:
    if isinstance(value, Code):  # before str: Code subclasses it
        return Code(str(value), None if value.scope is None else _normalise(value.scope, path))
    if value is None or isinstance(value, bool | str | float | ObjectId):
        return value
    if isinstance(value, Decimal128):
        # Its canonical string keeps every digit, the exponent and the sign of zero; what it
        # drops (the sign and payload of a NaN, non-canonical encodings) Extended JSON drops too.
        return Decimal128(str(value))
    if isinstance(value, Int64):
        return value
    if isinstance(value, int):
        if _INT32_MIN <= value <= _INT32_MAX:
            return value
        if _INT64_MIN <= value <= _INT64_MAX:
            return Int64(value)
        raise TypeFactoryError(path, f"integer {value} does not fit BSON's int64")
    if isinstance(value, dt.datetime):
        return _date_from_ms(_date_to_ms(value))
    if isinstance(value, DatetimeMS):
        return _date_from_ms(int(value))
    if isinstance(value, uuid.UUID):
        return Binary(value.bytes, 4)
    if isinstance(value, Binary):
        return bytes(value) if value.subtype == 0 else Binary(bytes(value), value.subtype)
    if isinstance(value, bytes):
        return value
    if isinstance(value, Regex):
        return Regex(value.pattern, _regex_flags(value.flags))
    if isinstance(value, re.Pattern):
        return Regex(value.pattern, _regex_flags(value.flags))
    if isinstance(value, DBRef):
        extra = {k: _normalise(v, path) for k, v in value.as_doc().items() if k[:1] != "$"}
        return DBRef(value.collection, _normalise(value.id, path), value.database, **extra)
    if isinstance(value, Timestamp | MinKey | MaxKey):
        return value
    if isinstance(value, Mapping):
        return {k: _normalise(v, _join(path, k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_normalise(v, f"{path}[]") for v in value]
    raise TypeFactoryError(path, f"{type(value).__name__} is not a BSON type")


def _regex_flags(flags: int | str) -> int:
    if isinstance(flags, str):
        return Regex("", flags).flags
    return int(flags)


def _date_to_ms(value: dt.datetime) -> int:
    # Integer arithmetic as BSON does: whole milliseconds, rounded towards minus infinity.
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _date_from_ms(ms: int) -> dt.datetime | DatetimeMS:
    try:
        return _EPOCH + dt.timedelta(milliseconds=ms)
    except OverflowError:
        return DatetimeMS(ms)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --- kinds and inference ------------------------------------------------------------------


def _kind(value: Any, path: str) -> str:
    """The kind of a normalised, non-null value."""
    kind = _KIND_BY_TYPE.get(type(value))
    if kind is not None:
        return kind
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, Int64):
        return "int64"
    if isinstance(value, int):
        return "int32"
    if isinstance(value, float):
        return "double"
    if isinstance(value, Decimal128):
        return "decimal"
    if isinstance(value, Code):
        return "code"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dt.datetime | DatetimeMS):
        return "date"
    if isinstance(value, ObjectId):
        return "objectId"
    if isinstance(value, bytes):  # Binary subclasses bytes
        return "binary"
    if isinstance(value, Timestamp):
        return "timestamp"
    if isinstance(value, Regex):
        return "regex"
    if isinstance(value, DBRef):
        return "dbref"
    if isinstance(value, MinKey):
        return "minKey"
    if isinstance(value, MaxKey):
        return "maxKey"
    if isinstance(value, dict):
        return "document"
    if isinstance(value, list):
        return "array"
    raise TypeFactoryError(path, f"{type(value).__name__} is not a BSON type")


# The exact types most values have, for a dictionary look-up before the isinstance chain.
_KIND_BY_TYPE: dict[type, str] = {
    bool: "bool", Int64: "int64", int: "int32", float: "double", Decimal128: "decimal",
    Code: "code", str: "string", dt.datetime: "date", ObjectId: "objectId", bytes: "binary",
    Binary: "binary", Timestamp: "timestamp", Regex: "regex", DBRef: "dbref", dict: "document",
    list: "array", MinKey: "minKey", MaxKey: "maxKey", DatetimeMS: "date",
}  # fmt: skip


@dataclass
class _Shape:
    """What one path held across a batch: the kinds seen, and the shapes beneath."""

    kinds: set[str] = field(default_factory=set)
    children: dict[str, _Shape] = field(default_factory=dict)  # document keys, first seen first
    element: _Shape | None = None  # array elements

    def add(self, value: Any, path: str) -> None:
        if value is None:
            return
        kind = _kind(value, path)
        self.kinds.add(kind)
        if kind == "document":
            for key, child in value.items():
                self.children.setdefault(key, _Shape()).add(child, _join(path, key))
        elif kind == "array":
            if self.element is None:
                self.element = _Shape()
            for item in value:
                self.element.add(item, f"{path}[]")


def infer_schema(
    docs: Iterable[Mapping[str, Any]], reserved: Iterable[str] = (), normalised: bool = False
) -> pa.Schema:
    """The Arrow schema that holds every document of a batch exactly (docs/types.md).

    Top-level keys become columns in first-seen order, plus `NULLS_COLUMN`. Fields that are
    only ever null get no column (the nulls column restores them). Top-level columns are named
    around `reserved` names (a table's own columns, e.g. apply's lineage columns) the way
    case-only duplicates are: `_id` next to a reserved `_id` becomes `_id%%1`.
    `normalised`: the documents already went through `normalise` (saves doing it again).
    """
    shape = _Shape(kinds={"document"})
    for doc in docs:
        shape.add(doc if normalised else normalise(doc), "")
    fields = _struct_fields(shape, "", taken=reserved)
    return pa.schema([*fields, pa.field(NULLS_COLUMN, _list_of(pa.string()))])


def _struct_fields(shape: _Shape, path: str, taken: Iterable[str] = ()) -> list[pa.Field]:
    present = {k: s for k, s in shape.children.items() if s.kinds}
    names = _assign_names(present, taken)
    return [pa.field(names[k], _arrow_type(s, _join(path, k))) for k, s in present.items()]


def _arrow_type(shape: _Shape, path: str) -> pa.DataType:
    kinds = shape.kinds
    if len(kinds) == 1 and next(iter(kinds)) in _NATURAL_KINDS:
        return _kind_type(next(iter(kinds)), shape, path)
    if not kinds:
        return pa.struct([pa.field(NONE_CHILD, pa.bool_())])
    ordered = [k for k in _KIND_ORDER if k in kinds]
    return pa.struct([pa.field(f"%{k}", _kind_type(k, shape, path)) for k in ordered])


def _kind_type(kind: str, shape: _Shape, path: str) -> pa.DataType:
    if kind == "document":
        fields = _struct_fields(shape, path)
        return pa.struct(fields or [pa.field(EMPTY_CHILD, pa.bool_())])
    if kind == "array":
        element = shape.element or _Shape()
        return _list_of(_arrow_type(element, f"{path}[]"))
    return _LEAF_TYPES[kind]


def _list_of(element: pa.DataType) -> pa.DataType:
    # "element" is the name Parquet's LIST convention and Delta use, so a read-back schema equals.
    return pa.list_(pa.field("element", element))


# --- reading a schema -----------------------------------------------------------------------


@functools.cache
def _is_variant(arrow_type: pa.DataType) -> bool:
    return _is_variant_uncached(arrow_type)


def _is_variant_uncached(arrow_type: pa.DataType) -> bool:
    return (
        pa.types.is_struct(arrow_type)
        and arrow_type.num_fields > 0
        and all(f.name in _KIND_BY_CHILD or f.name == NONE_CHILD for f in arrow_type)
    )


def _natural_kind(arrow_type: pa.DataType) -> str:
    """The kind a non-variant column holds."""
    if pa.types.is_struct(arrow_type):
        return "document"
    if pa.types.is_list(arrow_type):
        return "array"
    for kind in _NATURAL_KINDS:
        if kind in _LEAF_TYPES and _LEAF_TYPES[kind] == arrow_type:
            return kind
    raise TypeFactoryError("", f"{arrow_type} is not a type the factory writes")


@functools.cache
def _kinds_of(arrow_type: pa.DataType) -> dict[str, pa.DataType]:
    """Kind -> Arrow type of that kind's values, for a natural column or a variant."""
    return _kinds_of_uncached(arrow_type)


def _kinds_of_uncached(arrow_type: pa.DataType) -> dict[str, pa.DataType]:
    if _is_variant_uncached(arrow_type):
        return {_KIND_BY_CHILD[f.name]: f.type for f in arrow_type if f.name != NONE_CHILD}
    return {_natural_kind(arrow_type): arrow_type}


# --- to Arrow -------------------------------------------------------------------------------


def to_arrow(
    docs: Iterable[Mapping[str, Any]],
    schema: pa.Schema,
    as_json: Sequence[Collection[str]] | None = None,
    normalised: bool = False,
) -> pa.Table:
    """The documents as an Arrow table of exactly `schema` (from `infer_schema`/`merge_schemas`).

    Every value is converted here into its column's type: a value of a narrower numeric kind is
    widened only when the result is exact (an int64 into a double column only below 2**53 or
    when the double holds it exactly); anything else raises TypeFactoryError naming the path,
    as does a key the schema has no column for. Nothing is rounded, truncated or cast later.

    `as_json[i]` names top-level keys of `docs[i]` to store in their `<column>%json` sibling
    (which `schema` must have; see `json_column`) instead of the typed column. `normalised`:
    the documents already went through `normalise`.
    """
    columns = [f for f in _standard_schema(schema) if f.name != NULLS_COLUMN]
    top = pa.struct([f for f in columns if not _is_json_column(f.name)])
    rows: list[dict[str, Any]] = []
    nulls: list[list[str] | None] = []
    json_names = [f.name for f in columns if _is_json_column(f.name)]
    compiled = _compile_struct(top)
    for index, doc in enumerate(docs):
        found: list[str] = []
        keys = as_json[index] if as_json else ()
        kept = {k: v for k, v in doc.items() if k not in keys} if keys else doc
        typed = kept if normalised else normalise(kept)
        row = _document_value(typed, compiled, "", "", found)  # type: ignore[arg-type]
        for name in json_names:
            row[name] = None
        for key in keys:
            if key in doc:
                name = json_column(top, key)
                if name not in row:
                    raise TypeFactoryError(key, f"the schema has no column {name!r}")
                row[name] = json_value(doc[key])
        rows.append(row)
        nulls.append(found or None)
    arrays = [pa.array([row[f.name] for row in rows], type=f.type) for f in columns]
    arrays.append(pa.array(nulls, type=_list_of(pa.string())))
    fields = [*columns, pa.field(NULLS_COLUMN, _list_of(pa.string()))]
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=schema.metadata))


def json_column(columns: Iterable[pa.Field], key: str) -> str:
    """The `%json` sibling column of top-level `key`: its typed column's name + JSON_SUFFIX."""
    for f in columns:
        if not _is_json_column(f.name) and decode_field_name(f.name) == key:
            return f.name + JSON_SUFFIX
    return encode_field_name(key) + JSON_SUFFIX


@dataclass(eq=False)
class _Node:
    """An Arrow type compiled once per `to_arrow` call, so that converting a value never hashes
    a (possibly deeply nested) DataType: the kinds a column holds, a variant's member names, a
    struct's fields by decoded key, a list's element."""

    available: dict[str, pa.DataType] = field(default_factory=dict)
    variant_members: tuple[str, ...] | None = None
    document: _Node | None = None  # the struct node of the "document" kind
    array: _Node | None = None  # the list node of the "array" kind
    by_key: dict[str, tuple[str, _Node]] = field(default_factory=dict)  # structs
    empty: dict[str, None] = field(default_factory=dict)  # structs: the all-null row
    element: _Node | None = None  # lists


def _compile(arrow_type: pa.DataType) -> _Node:
    available = _kinds_of_uncached(arrow_type)
    node = _Node(available=available)
    if _is_variant_uncached(arrow_type):
        node.variant_members = tuple(f.name for f in arrow_type)
    if "document" in available:
        node.document = _compile_struct(available["document"])
    if "array" in available:
        node.array = _Node(element=_compile(available["array"].value_type))
    return node


def _compile_struct(struct: pa.DataType) -> _Node:
    return _Node(
        by_key={decode_field_name(f.name): (f.name, _compile(f.type)) for f in struct},
        empty={f.name: None for f in struct},
    )


def _document_value(
    doc: dict[str, Any], struct: _Node, path: str, null_path: str, nulls: list[str]
) -> dict[str, Any]:
    by_key = struct.by_key
    out = dict(struct.empty)
    for key, value in doc.items():
        child = by_key.get(key)
        if value is None:
            nulls.append(_join(null_path, child[0] if child else encode_field_name(key)))
            continue
        if child is None:
            raise TypeFactoryError(
                _join(path, key), "field has no column in the schema (infer or merge it first)"
            )
        name, node = child
        out[name] = _value(value, node, _join(path, key), _join(null_path, name), nulls)
    return out


def _value(value: Any, node: _Node, path: str, null_path: str, nulls: list[str]) -> Any:
    """The Arrow-ready Python value of a normalised, non-null value in a column of `node`."""
    kind = _KIND_BY_TYPE.get(type(value)) or _kind(value, path)
    available = node.available
    target = kind if kind in available else _target_kind(kind, value, available)
    if target is None:
        described = ", ".join(available) or "nothing"
        raise TypeFactoryError(
            path, f"a {kind} value does not fit the column (holds {described}); merge the schema"
        )
    converted: Any
    if target == "document":
        assert node.document is not None
        converted = _document_value(value, node.document, path, null_path, nulls)
    elif target == "array":
        assert node.array is not None and node.array.element is not None
        element = node.array.element
        converted = [
            None if item is None else _value(item, element, f"{path}[]", f"{null_path}.{i}", nulls)
            for i, item in enumerate(value)
        ]
    else:
        converted = _leaf_value(value, kind, target, path)
    if node.variant_members is not None:
        member = f"%{target}"
        return {m: (converted if m == member else None) for m in node.variant_members}
    return converted


def _target_kind(kind: str, value: Any, available: Mapping[str, pa.DataType]) -> str | None:
    if kind in available:
        return kind
    if kind in _NUMERIC_RANK:
        # Widen exactly, to the narrowest wider kind there is: int32 -> int64 -> double, and any
        # integer into a Decimal128 (34 digits hold every int64).
        for wider in ("int64", "double", "decimal"):
            if wider in available and _widens_exactly(kind, wider, value):
                return wider
    return None


def _widens_exactly(kind: str, target: str, value: Any) -> bool:
    if target == "decimal":
        return kind in ("int32", "int64")
    if _NUMERIC_RANK[kind] >= _NUMERIC_RANK[target]:
        return False
    if target == "double":
        return float(value) == int(value)  # exact comparison: no int64 above 2**53 slips by
    return True


def _leaf_value(value: Any, kind: str, target: str, path: str) -> Any:
    if target in ("int32", "int64"):
        return int(value)
    if target == "double":
        return float(value)
    if target == "decimal":
        return str(value if kind == "decimal" else Decimal128(str(int(value))))
    if target in ("string", "bool"):
        return value
    if target == "date":
        ms = int(value) if isinstance(value, DatetimeMS) else _date_to_ms(value)
        micros = ms * _MICROS_PER_MS
        if not _INT64_MIN <= micros <= _INT64_MAX:
            raise TypeFactoryError(
                path, f"date {ms} ms since the epoch is outside Delta's microsecond timestamp"
            )
        return micros
    if target == "objectId":
        return str(value)
    if target == "binary":
        return {"subtype": value.subtype if isinstance(value, Binary) else 0, "data": bytes(value)}
    if target == "timestamp":
        return {"t": value.time, "i": value.inc}
    if target == "regex":
        return {"pattern": value.pattern, "flags": _flag_letters(value.flags)}
    if target == "code":
        return {"code": str(value), "scope": None if value.scope is None else _ext(value.scope)}
    if target == "dbref":
        extra = {k: v for k, v in value.as_doc().items() if k[:1] != "$"}
        return {
            "collection": value.collection,
            "id": _ext({"id": value.id}),
            "database": value.database,
            "extra": _ext(extra) if extra else None,
        }
    return True  # minKey, maxKey


def _flag_letters(flags: int) -> str:
    return "".join(letter for letter, bit in _REGEX_FLAGS if flags & bit)


def _ext(doc: dict[str, Any]) -> str:
    return json_util.dumps(doc, json_options=CANONICAL_JSON_OPTIONS)


# --- from Arrow -----------------------------------------------------------------------------


def from_arrow(table: pa.Table) -> list[dict[str, Any]]:
    """The documents of a table `to_arrow` wrote (or Delta/Parquet read back), as BSON values.

    Values come back as pymongo decodes BSON: int, Int64, float, Decimal128, str, bool, None,
    ObjectId, datetime (tz-aware UTC; DatetimeMS beyond Python's range), bytes (subtype 0) or
    Binary, Timestamp, Regex, Code, DBRef, MinKey, MaxKey, dict and list.
    """
    schema = _standard_schema(table.schema)
    # Timestamps are read as int64 microseconds: pyarrow's datetime conversion stops at year 9999.
    readable = table.cast(
        pa.schema([f.with_type(_standard(f.type, timestamps_as_int=True)) for f in schema])
    )
    columns = [f for f in schema if f.name != NULLS_COLUMN and not _is_json_column(f.name)]
    as_json = [f.name for f in schema if _is_json_column(f.name)]
    top = pa.struct(columns)
    docs = []
    for row in readable.to_pylist():
        doc = _document(row, top, "")
        for name in as_json:
            if row[name] is not None:
                key = decode_field_name(name[: -len(JSON_SUFFIX)])
                doc[key] = normalise(_unext(row[name])["v"])
        for null_path in row.get(NULLS_COLUMN) or ():
            _set_null(doc, null_path)
        docs.append(doc)
    return docs


def _is_json_column(name: str) -> bool:
    # Encoded names hold "%" only before upper-case hex or "%", so none ends in "%json".
    return name.endswith(JSON_SUFFIX) and len(name) > len(JSON_SUFFIX)


def json_value(value: Any) -> str:
    """What a `%json` column holds for a value: canonical Extended JSON of ``{"v": value}``."""
    return _ext({"v": normalise(value)})


def _standard_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_type(_standard(f.type)) for f in schema], metadata=schema.metadata)


def _standard(arrow_type: pa.DataType, timestamps_as_int: bool = False) -> pa.DataType:
    """The type the factory writes for an equivalent one a reader may hand back.

    Delta and Parquet readers may return large or view variants of strings, binaries and lists,
    and timestamps in other units; the values are the same.
    """
    if pa.types.is_timestamp(arrow_type):
        return pa.int64() if timestamps_as_int else _TIMESTAMP
    if pa.types.is_large_string(arrow_type) or pa.types.is_string_view(arrow_type):
        return pa.string()
    if pa.types.is_large_binary(arrow_type) or pa.types.is_binary_view(arrow_type):
        return pa.binary()
    if pa.types.is_struct(arrow_type):
        return pa.struct([f.with_type(_standard(f.type, timestamps_as_int)) for f in arrow_type])
    if (
        pa.types.is_list(arrow_type)
        or pa.types.is_large_list(arrow_type)
        or pa.types.is_list_view(arrow_type)
        or pa.types.is_large_list_view(arrow_type)
    ):
        element = _standard(arrow_type.value_type, timestamps_as_int)
        return _list_of(element)
    return arrow_type


def _document(row: Mapping[str, Any], struct: pa.DataType, path: str) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for f in struct:
        if f.name == EMPTY_CHILD:
            continue
        raw = row.get(f.name)
        if raw is not None:
            key = decode_field_name(f.name)
            doc[key] = _python(raw, f.type, _join(path, key))
    return doc


def _python(raw: Any, arrow_type: pa.DataType, path: str) -> Any:
    if _is_variant(arrow_type):
        for f in arrow_type:
            if f.name != NONE_CHILD and raw.get(f.name) is not None:
                return _kind_python(raw[f.name], _KIND_BY_CHILD[f.name], f.type, path)
        raise TypeFactoryError(path, "a variant value with no member set")
    return _kind_python(raw, _natural_kind(arrow_type), arrow_type, path)


def _kind_python(raw: Any, kind: str, arrow_type: pa.DataType, path: str) -> Any:
    if kind == "document":
        return _document(raw, arrow_type, path)
    if kind == "array":
        element = arrow_type.value_type
        return [None if item is None else _python(item, element, f"{path}[]") for item in raw]
    if kind == "int64":
        return Int64(raw)
    if kind == "decimal":
        return Decimal128(raw)
    if kind == "date":
        return _date_from_ms(raw // _MICROS_PER_MS)
    if kind == "objectId":
        return ObjectId(raw)
    if kind == "binary":
        return raw["data"] if raw["subtype"] == 0 else Binary(raw["data"], raw["subtype"])
    if kind == "timestamp":
        return Timestamp(raw["t"], raw["i"])
    if kind == "regex":
        return Regex(raw["pattern"], _regex_flags(raw["flags"]))
    if kind == "code":
        return Code(raw["code"], None if raw["scope"] is None else _unext(raw["scope"]))
    if kind == "dbref":
        extra = _unext(raw["extra"]) if raw["extra"] is not None else {}
        return DBRef(raw["collection"], _unext(raw["id"])["id"], raw["database"], **extra)
    if kind == "minKey":
        return MinKey()
    if kind == "maxKey":
        return MaxKey()
    return raw  # int32, double, string, bool


def _unext(text: str) -> dict[str, Any]:
    doc = json_util.loads(text, json_options=_JSON_DECODE)
    return {k: normalise(v) for k, v in doc.items()}


def _set_null(doc: dict[str, Any], null_path: str) -> None:
    *parents, last = null_path.split(".")
    node: Any = doc
    for segment in parents:
        node = node[int(segment)] if isinstance(node, list) else node[decode_field_name(segment)]
    node[decode_field_name(last)] = None


# --- merging schemas --------------------------------------------------------------------------


@dataclass(frozen=True)
class Conflict:
    """A field whose incoming type cannot merge into the existing one."""

    path: str
    existing: pa.DataType
    incoming: pa.DataType

    def __str__(self) -> str:
        return f"{self.path}: existing {self.existing}, incoming {self.incoming}"


@dataclass(frozen=True)
class Widening:
    """A numeric field whose column type widens (int32 -> int64 -> double)."""

    path: str
    existing: pa.DataType
    widened: pa.DataType


@dataclass(frozen=True)
class MergeResult:
    """How an incoming batch schema merges into an existing table schema; no policy applied.

    `schema` is the merged schema: existing fields first and unchanged except where widened,
    new fields and new variant members added. A conflicting field keeps its existing type in
    `schema`, so `ok` must be checked before writing with it.
    """

    schema: pa.Schema
    added: tuple[str, ...] = ()
    widened: tuple[Widening, ...] = ()
    conflicts: tuple[Conflict, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.conflicts

    @property
    def changed(self) -> bool:
        return bool(self.added or self.widened)


@dataclass
class _MergeLog:
    added: list[str] = field(default_factory=list)
    widened: list[Widening] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)


def merge_schemas(
    existing: pa.Schema | None, incoming: pa.Schema, reserved: Iterable[str] = ()
) -> MergeResult:
    """Merge a batch's inferred schema into a table's: report what is added, widened, in conflict.

    Fields are matched by their decoded BSON keys. Allowed without loss: new fields (new keys
    get names that do not collide with existing ones ignoring case), new nested fields, new
    variant members (a variant column gains a kind), numeric widening of a plain column
    (int32 -> int64 -> double), and incoming kinds that already fit (int32 values into int64).
    Everything else (a string arriving where an int32 column is) is a Conflict naming the path
    and both types; deciding what to do about it is the caller's policy. New top-level
    columns are named around `reserved` names too (see `infer_schema`); `%json` columns of
    `existing` are carried over unchanged, and `incoming` may add new ones.
    """
    if existing is None:
        return MergeResult(schema=incoming)
    log = _MergeLog()
    existing = _standard_schema(existing)
    existing_columns = [
        f for f in existing if f.name != NULLS_COLUMN and not _is_json_column(f.name)
    ]
    incoming_columns = [
        f for f in incoming if f.name != NULLS_COLUMN and not _is_json_column(f.name)
    ]
    merged = _merge_struct(
        pa.struct(existing_columns), pa.struct(incoming_columns), "", log, reserved
    )
    json_columns = [f for f in existing if _is_json_column(f.name)]
    for f in incoming:
        if _is_json_column(f.name) and f.name not in {j.name for j in json_columns}:
            json_columns.append(f)
            log.added.append(f.name)
    fields = [*merged, *json_columns, pa.field(NULLS_COLUMN, _list_of(pa.string()))]
    return MergeResult(
        schema=pa.schema(fields, metadata=existing.metadata),
        added=tuple(log.added),
        widened=tuple(log.widened),
        conflicts=tuple(log.conflicts),
    )


def _merge_struct(
    existing: pa.DataType,
    incoming: pa.DataType,
    path: str,
    log: _MergeLog,
    reserved: Iterable[str] = (),
) -> pa.DataType:
    by_key = {decode_field_name(f.name): f for f in existing}
    merged = {f.name: f for f in existing}
    new = [f for f in incoming if f.name != EMPTY_CHILD and decode_field_name(f.name) not in by_key]
    names = _assign_names([decode_field_name(f.name) for f in new], taken=[*merged, *reserved])
    for f in incoming:
        if f.name == EMPTY_CHILD:
            continue
        key = decode_field_name(f.name)
        old = by_key.get(key)
        child_path = _join(path, key)
        if old is None:
            merged[names[key]] = pa.field(names[key], f.type)
            log.added.append(child_path)
        else:
            merged[old.name] = old.with_type(_merge_type(old.type, f.type, child_path, log))
    return pa.struct(list(merged.values()))


def _merge_type(
    existing: pa.DataType, incoming: pa.DataType, path: str, log: _MergeLog
) -> pa.DataType:
    if existing == incoming:
        return existing
    old, new = _kinds_of(existing), _kinds_of(incoming)
    if not new:  # a variant that has seen no value yet (elements of empty arrays) fits anything
        return existing
    if _is_variant(existing):
        children = {f.name: f for f in existing}
        for kind in (k for k in _KIND_ORDER if k in new):
            name = f"%{kind}"
            if name in children:
                merged = _merge_kind(kind, children[name].type, new[kind], path, log)
                children[name] = children[name].with_type(merged)
            else:
                children[name] = pa.field(name, new[kind])
                log.added.append(f"{path}<{kind}>")
        return pa.struct(list(children.values()))
    (old_kind,) = old
    if set(new) == {old_kind}:
        return _merge_kind(old_kind, existing, new[old_kind], path, log)
    if old_kind in _NUMERIC_RANK and set(new) <= set(_NUMERIC_RANK):
        widest = max([old_kind, *new], key=_NUMERIC_RANK.__getitem__)
        if widest == old_kind:
            return existing
        log.widened.append(Widening(path, existing, _LEAF_TYPES[widest]))
        return _LEAF_TYPES[widest]
    log.conflicts.append(Conflict(path, existing, incoming))
    return existing


def _merge_kind(
    kind: str, existing: pa.DataType, incoming: pa.DataType, path: str, log: _MergeLog
) -> pa.DataType:
    if kind == "document":
        # An empty document's placeholder child stays once the table has it: dropping a column
        # is a schema change of its own, and the placeholder costs nothing.
        return _merge_struct(existing, incoming, path, log)
    if kind == "array":
        element = _merge_type(existing.value_type, incoming.value_type, f"{path}[]", log)
        return _list_of(element)
    if existing != incoming:
        log.conflicts.append(Conflict(path, existing, incoming))
    return existing


# --- coercing -------------------------------------------------------------------------------

_INTEGER_TEXT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_NO_CONVERSION = object()


def coerce(doc: Mapping[str, Any], schema: pa.Schema) -> dict[str, Any]:
    """A copy of `doc` whose values fit `schema`'s columns, converted only where nothing is lost.

    For apply's `coerce` schema policy. A value that fits (as `to_arrow` would take it) stays;
    one that does not is converted when the conversion reads back to the same value: the text
    "42" into an int column (not "042" or "4.2e1"), the double 2.0 into an int column (not
    2.5), an int64 that fits into an int32 column, a number, boolean or ObjectId into a string
    column as its canonical text, "true"/"false" into a boolean column, canonical Decimal128
    text into a Decimal128 column. Fields without a column are left to schema evolution.
    Raises TypeFactoryError naming the first path that cannot be converted without loss.
    """
    columns = [
        f
        for f in _standard_schema(schema)
        if f.name != NULLS_COLUMN and not _is_json_column(f.name)
    ]
    return _coerce_document(normalise(doc), pa.struct(columns), "")


def _coerce_document(doc: dict[str, Any], struct: pa.DataType, path: str) -> dict[str, Any]:
    by_key = {decode_field_name(f.name): f for f in struct}
    out: dict[str, Any] = {}
    for key, value in doc.items():
        column = by_key.get(key)
        if column is None or value is None:
            out[key] = value
        else:
            out[key] = _coerce_value(value, column.type, _join(path, key))
    return out


def _coerce_value(value: Any, arrow_type: pa.DataType, path: str) -> Any:
    kind = _kind(value, path)
    available = _kinds_of(arrow_type)
    target = _target_kind(kind, value, available)
    if target == "document":
        return _coerce_document(value, available["document"], path)
    if target == "array":
        element = available["array"].value_type
        return [None if v is None else _coerce_value(v, element, f"{path}[]") for v in value]
    if target is not None:
        return value
    for candidate in (k for k in _KIND_ORDER if k in available):
        converted = _convert(value, kind, candidate)
        if converted is not _NO_CONVERSION:
            return converted
    raise TypeFactoryError(path, f"a {kind} value cannot be converted to {arrow_type} without loss")


def _as_integer(value: Any, kind: str) -> int | None:
    """The integer a value stands for exactly (not -0.0, "042" or 2.5), else None."""
    if kind in ("int32", "int64"):
        return int(value)
    if kind == "double":
        exact = math.isfinite(value) and value.is_integer() and math.copysign(1.0, value) > 0
        return int(value) if exact else None
    text = str(value) if kind in ("string", "decimal") else ""
    return int(text) if _INTEGER_TEXT.fullmatch(text) else None


def _convert(value: Any, kind: str, target: str) -> Any:
    """`value` as a `target` kind if that reads back to the same value, else _NO_CONVERSION."""
    if target in ("int32", "int64"):
        low, high = (_INT32_MIN, _INT32_MAX) if target == "int32" else (_INT64_MIN, _INT64_MAX)
        number = _as_integer(value, kind)
        if number is not None and low <= number <= high:
            return number if target == "int32" else Int64(number)
    elif target == "double" and kind == "string":
        try:
            number_f = float(value)
        except ValueError:
            return _NO_CONVERSION
        if repr(number_f) == value:
            return number_f
    elif target == "decimal" and kind == "string":
        try:
            decimal_value = Decimal128(value)
        except (ValueError, ArithmeticError):
            return _NO_CONVERSION
        if str(decimal_value) == value:
            return decimal_value
    elif target == "bool" and kind == "string" and value in ("true", "false"):
        return value == "true"
    elif target == "string":
        if kind in ("int32", "int64"):
            return str(int(value))
        if kind == "double":
            return repr(value)
        if kind == "bool":
            return "true" if value else "false"
        if kind in ("decimal", "objectId"):
            return str(value)
    return _NO_CONVERSION
