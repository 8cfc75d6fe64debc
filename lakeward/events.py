"""The change event and its wire form: a Debezium-compatible envelope plus a total-order `seq`.

Envelope (JSON, one Kafka record per change):

    {"op": "c|u|d|r", "before": <Extended JSON string|null>, "after": <Extended JSON string|null>,
     "source": {"connector": "lakeward", "name": <pipeline>, "db", "collection", "ts_ms", "ord",
                "resume_token", "lsid", "txnNumber"},
     "ts_ms": <capture wall time>, "seq": <24 hex chars>, "document_key": <Extended JSON|null>}

`before`/`after` are canonical Extended JSON strings, so every BSON type survives the trip. The
Kafka key is the canonical `_id` (see `canonical_key`).

The decoder also reads the records of Debezium's MongoDB connector (JsonConverter without
schemas): their `after` is the MongoDB Java driver's legacy "strict" Extended JSON, their key
``{"id": "<relaxed Extended JSON of _id>"}``, and they carry no `seq`, so it is derived from
`source` (see `decode_envelope` and docs/debezium.md).
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import uuid
from dataclasses import dataclass
from typing import Any, TypeGuard

import orjson
from bson import Binary, Code, Decimal128, Int64, ObjectId, json_util
from bson.json_util import CANONICAL_JSON_OPTIONS, JSONOptions

from lakeward import extjson

__all__ = [
    "ChangeEvent",
    "EnvelopeError",
    "NotAChangeError",
    "canonical_key",
    "decode_envelope",
    "encode_envelope",
    "make_seq",
]

_DECODE_OPTIONS: JSONOptions = CANONICAL_JSON_OPTIONS.with_options(tz_aware=True, tzinfo=dt.UTC)
OPS = frozenset({"c", "u", "d", "r"})
_HEX = frozenset("0123456789abcdef")


#: The envelope format this version writes and the newest it reads. An envelope with a
#: greater "format" comes from a newer Lakeward: dead-lettered (reason newer_format), never
#: half-understood.
FORMAT_VERSION = 1


class EnvelopeError(ValueError):
    """A record that is not a valid change envelope (goes to the dead-letter path).

    `reason` is the dead-letter reason: not_json, not_an_object, unknown_op, missing_source,
    bad_seq, bad_extended_json, missing_document, missing_id or newer_format.
    """

    def __init__(self, message: str, reason: str = "malformed_envelope") -> None:
        super().__init__(message)
        self.reason = reason


class NotAChangeError(EnvelopeError):
    """A well-formed record that carries no change to apply.

    `kind` says which: ``tombstone`` (a null value Debezium writes after a delete, for
    compaction), ``heartbeat`` (Debezium's heartbeat topic), ``transaction_metadata`` (Debezium's
    BEGIN/END records), ``update_without_document`` (a Debezium update whose document was deleted
    before the connector looked it up; its delete follows, as Lakeward's own capture assumes when
    it skips such an update). Consumers skip and count these instead of dead-lettering them; it
    subclasses EnvelopeError so a consumer that does not know it still never drops it silently.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message, reason=kind)
        self.kind = kind


def make_seq(cluster_seconds: int, cluster_increment: int, position: int) -> str:
    """A fixed-width hex string whose lexicographic order is the order of changes.

    Cluster time orders changes across the replica set; `position` orders the changes that share
    one cluster time (the operations of one multi-document transaction).
    """
    return f"{cluster_seconds:08x}{cluster_increment:08x}{position:08x}"


def canonical_key(value: Any) -> tuple[str, str]:
    """(key, key type) for a BSON `_id`: distinct `_id`s never share both parts.

    MongoDB treats numerically equal numbers as the same `_id` (1, 1.0 and NumberLong(1)), so all
    numbers share the type "number" and a canonical decimal form; everything else keeps its type.
    """
    if isinstance(value, ObjectId):
        return str(value), "objectId"
    if isinstance(value, str) and not isinstance(value, Code):
        return value, "string"
    if isinstance(value, bool):
        return ("true" if value else "false"), "bool"
    if isinstance(value, int | Int64):
        return str(int(value)), "number"
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return str(int(value)), "number"
        return repr(value), "number"
    if isinstance(value, Decimal128):
        number = value.to_decimal()
        if number.is_finite() and number == number.to_integral_value():
            # Positional digits, as str(int(...)) writes them, without the int: Decimal128's
            # exponent reaches 6111, past Python's limit for int-to-str conversion.
            return ("0" if number == 0 else format(number.to_integral_value(), "f")), "number"
        return str(number), "number"
    if isinstance(value, uuid.UUID):
        return value.hex, "binary:4"
    if isinstance(value, Binary):
        return value.hex(), f"binary:{value.subtype}"
    if isinstance(value, dt.datetime):
        return str(json_util._datetime_to_millis(value)), "date"
    # Documents, arrays and rarer types: their canonical Extended JSON is unique per value. Numbers
    # inside are normalised first: MongoDB's _id index compares them by value at any depth
    # ({a: 1} and {a: NumberLong(1)} are one _id), and a producer may not keep their BSON type
    # (Debezium's Kafka key is relaxed Extended JSON, which writes NumberLong(1) as 1).
    return (
        json_util.dumps(_numbers_by_value(value), json_options=CANONICAL_JSON_OPTIONS),
        type(value).__name__,
    )


def _numbers_by_value(value: Any) -> Any:
    """A copy in which every number is the Decimal128 of its canonical key, at any depth.

    A number whose canonical key has more digits than Decimal128 holds (an integral double or
    Decimal128 of 1e34 and up) becomes `Code("lakeward:number:<key>")` instead, and a Code value
    gets the prefix `lakeward:code:`, so the two can never meet.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, Code):
        return Code(f"lakeward:code:{value}", value.scope)
    if isinstance(value, int | float | Decimal128):
        text = canonical_key(value)[0]
        try:
            return Decimal128(text)
        except decimal.Inexact:
            return Code(f"lakeward:number:{text}")
    if isinstance(value, dict):
        return {k: _numbers_by_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers_by_value(v) for v in value]
    return value


@dataclass(frozen=True)
class ChangeEvent:
    """One change of one document, as captured."""

    op: str
    database: str
    collection: str
    key: str
    key_type: str
    seq: str
    #: Datetimes in them may be naive (UTC): the change-stream reader decodes them so.
    after: dict[str, Any] | None = None
    before: dict[str, Any] | None = None
    source_ts_ms: int = 0
    resume_token: dict[str, Any] | None = None
    lsid: dict[str, Any] | None = None
    txn_number: int | None = None
    document_key: dict[str, Any] | None = None

    @property
    def kafka_key(self) -> bytes:
        return f"{self.key_type}:{self.key}".encode()


def encode_envelope(event: ChangeEvent, pipeline: str, captured_at_ms: int) -> bytes:
    """The Debezium-compatible JSON envelope of an event."""

    def ext(doc: dict[str, Any] | None) -> str | None:
        return None if doc is None else extjson.dumps(doc)

    return orjson.dumps(
        {
            "op": event.op,
            "before": ext(event.before),
            "after": ext(event.after),
            "source": {
                "connector": "lakeward",
                "name": pipeline,
                "db": event.database,
                "collection": event.collection,
                "ts_ms": event.source_ts_ms,
                "ord": int(event.seq[8:16], 16),
                "resume_token": ext(event.resume_token),
                "lsid": ext(event.lsid),
                "txnNumber": event.txn_number,
            },
            "ts_ms": captured_at_ms,
            "seq": event.seq,
            "format": FORMAT_VERSION,
            # Deletes carry no document without pre-images; the key still names the row.
            "document_key": ext(event.document_key),
        }
    )


def decode_envelope(value: bytes | None, kafka_key: bytes | None = None) -> ChangeEvent:
    """Parse an envelope (Lakeward's or Debezium's); raises EnvelopeError saying what is wrong.

    The `_id` comes from `after`, else `before`, else `document_key`, else a Debezium-style Kafka
    key (``{"id": "<Extended JSON of _id>"}``).

    A record without `seq` is read as Debezium's: `seq` = make_seq(`source.ts_ms` // 1000,
    `source.ord`, `transaction.total_order` - 1, or 0 without transaction metadata). Debezium's
    `ord` is the cluster time's increment; its `ts_ms` is the cluster time's seconds only when
    the connector rewrites `wallTime` as Lakeward's does (docs/debezium.md), else the wall clock.
    A Debezium snapshot row (`r`, `ord` -1) gets make_seq(`ts_ms` // 1000, 0, 0).
    Records that carry no change (tombstones, heartbeats, transaction metadata, an update of a
    since-deleted document) raise NotAChangeError.
    """
    if not value:
        raise NotAChangeError("tombstone", "a null value (a tombstone after a delete) is no change")
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError(f"not JSON: {exc}", "not_json") from exc
    if not isinstance(raw, dict):
        raise EnvelopeError("envelope is not a JSON object", "not_an_object")
    if isinstance(raw.get("payload"), dict) and "schema" in raw:
        raw = raw["payload"]  # JsonConverter with schemas enabled wraps the value
    version = raw.get("format", FORMAT_VERSION)
    if not _is_int(version) or version > FORMAT_VERSION:
        raise EnvelopeError(
            f"envelope format {version!r} is newer than this Lakeward reads ({FORMAT_VERSION}); "
            "upgrade the workers, then replay the dead letters",
            "newer_format",
        )
    if "op" not in raw:
        _reject_control_record(raw)
    op = raw.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise EnvelopeError(f"op must be one of c, u, d, r; got {op!r}", "unknown_op")
    source = raw.get("source")
    if not isinstance(source, dict) or not source.get("db") or not source.get("collection"):
        raise EnvelopeError("source.db and source.collection are required", "missing_source")
    if not isinstance(source["db"], str) or not isinstance(source["collection"], str):
        raise EnvelopeError("source.db and source.collection must be strings", "missing_source")
    source_ts_ms = source.get("ts_ms") or 0
    if not _is_int(source_ts_ms):
        raise EnvelopeError(
            f"source.ts_ms must be an integer (milliseconds); got {source_ts_ms!r}",
            "missing_source",
        )
    seq = raw.get("seq")
    if seq is None:
        seq = _derived_seq(raw, source)
    elif not isinstance(seq, str) or len(seq) != 24 or not _HEX.issuperset(seq):
        raise EnvelopeError(f"seq must be 24 lowercase hex characters; got {seq!r}", "bad_seq")
    try:
        after = _parse_ext(raw.get("after"))
        before = _parse_ext(raw.get("before"))
        document_key = _parse_ext(raw.get("document_key"))
    except ValueError as exc:
        raise EnvelopeError(
            f"before/after is not valid Extended JSON: {exc}", "bad_extended_json"
        ) from exc
    if op != "d" and after is None:
        if op == "u" and "seq" not in raw:
            raise NotAChangeError(
                "update_without_document",
                "a Debezium update without 'after': the document was deleted before the "
                "connector looked it up, and its delete follows",
            )
        raise EnvelopeError(f"op {op!r} needs an 'after' document", "missing_document")
    for image in (after, before, document_key, _debezium_key(kafka_key)):
        if image is not None and "_id" in image:
            key, key_type = canonical_key(image["_id"])
            break
    else:
        raise EnvelopeError(
            "no _id found in after, before, document_key or the Kafka key", "missing_id"
        )
    try:
        lsid = _parse_ext(source.get("lsid"))
    except ValueError as exc:
        raise EnvelopeError(
            f"source.lsid is not valid Extended JSON: {exc}", "bad_extended_json"
        ) from exc
    txn_number = source.get("txnNumber")
    return ChangeEvent(
        op=op,
        database=source["db"],
        collection=source["collection"],
        key=key,
        key_type=key_type,
        seq=seq,
        after=after,
        before=before,
        source_ts_ms=source_ts_ms,
        lsid=lsid,
        txn_number=txn_number if _is_int(txn_number) else None,
        document_key={"_id": image["_id"]},
    )


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _reject_control_record(raw: dict[str, Any]) -> None:
    """Raise NotAChangeError for Debezium's heartbeat and transaction-metadata records."""
    if raw and set(raw) <= {"ts_ms"}:
        raise NotAChangeError("heartbeat", "a Debezium heartbeat record is no change")
    if raw.get("status") in ("BEGIN", "END") and "id" in raw:
        raise NotAChangeError(
            "transaction_metadata", f"a Debezium transaction {raw['status']} record is no change"
        )


def _derived_seq(raw: dict[str, Any], source: dict[str, Any]) -> str:
    """Debezium's records carry no seq: cluster seconds, increment and position from `source`."""
    ts_ms, increment = source.get("ts_ms"), source.get("ord")
    if not (_is_int(ts_ms) and _is_int(increment)):
        raise EnvelopeError(
            "seq is missing and source.ts_ms/source.ord (Debezium's cluster time) are not "
            f"integers to derive it from; got ts_ms={ts_ms!r}, ord={increment!r}",
            "bad_seq",
        )
    if raw.get("op") == "r" and increment < 0:
        # A Debezium snapshot row has no cluster time (ord -1) and ts_ms is when the connector
        # read it; the start of that second is older than every change after the read, so those
        # changes win, and a re-snapshot still replaces rows older than it (docs/debezium.md).
        increment = position = 0
    else:
        position = 0
        transaction = raw.get("transaction")
        if isinstance(transaction, dict) and _is_int(transaction.get("total_order")):
            # total_order counts the transaction's events from 1, in MongoDB's order.
            position = transaction["total_order"] - 1
    seconds = ts_ms // 1000
    if not all(0 <= part < 2**32 for part in (seconds, increment, position)):
        raise EnvelopeError(
            f"cannot derive seq from source.ts_ms={ts_ms}, ord={increment}, position={position}",
            "bad_seq",
        )
    return make_seq(seconds, increment, position)


def _debezium_key(kafka_key: bytes | None) -> dict[str, Any] | None:
    if not kafka_key or not kafka_key.startswith(b"{"):
        return None
    try:
        raw = orjson.loads(kafka_key)
        payload = raw.get("payload", raw) if isinstance(raw, dict) else None
        text = payload.get("id") if isinstance(payload, dict) else None
        return {"_id": _loads_ext(text)} if text else None
    except ValueError:  # orjson.JSONDecodeError included
        return None


def _loads_ext(text: str) -> Any:
    """json_util.loads, with every refusal as a ValueError.

    Besides ValueError, json_util raises bson's InvalidId (tests/fuzz found it) and
    InvalidBSON, TypeError, OverflowError and RecursionError on other malformed values
    (tests/test_envelope_hostile.py); a record must become a dead letter, never fail its batch,
    so all of them are one kind here.
    """
    try:
        return json_util.loads(text, json_options=_DECODE_OPTIONS)
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"{type(exc).__name__}: {exc}") from exc


def _parse_ext(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError("expected an Extended JSON string")
    doc = _loads_ext(text)
    if not isinstance(doc, dict):
        raise ValueError("expected a document")
    return doc


def document_json(doc: dict[str, Any]) -> str:
    """Canonical Extended JSON of a document, the lossless form the slice's table stores."""
    return extjson.dumps(doc)
