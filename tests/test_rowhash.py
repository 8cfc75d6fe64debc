"""The per-row `_hash`: apply's hash of the document it was given equals the hash of MongoDB's
own bytes, so reconciliation's `fast` mode can compare without decoding (lakeward/rowhash.py)."""

from __future__ import annotations

import datetime as dt
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
)

from lakeward.events import ChangeEvent, canonical_key, decode_envelope, encode_envelope
from lakeward.rowhash import document_bson_hash, raw_batch_hashes

_READ = bson.CodecOptions(tz_aware=True)  # how capture's clients decode (tz_aware=True)

IDS: list[Any] = [
    ObjectId("65a1b2c3d4e5f60718293a4b"), "text id", "", 7, Int64(2**40), -1.5,
    Decimal128("12.50"), {"a": 1, "b": [1, "x"]}, Binary(uuid.UUID(int=5).bytes, 4),
    Binary(b"\x00\x01", 0), Binary(b"zz", 128), True, dt.datetime(2024, 2, 29, 1, 2, 3, 4000),
    Timestamp(1700000000, 3), MinKey(), MaxKey(), None, Code("f()"), Regex("^a", "im"),
]  # fmt: skip

FIELDS: dict[str, Any] = {
    "int": 1, "long": Int64(1), "double": 1.0, "negzero": -0.0, "nan": float("nan"),
    "dec": Decimal128("-0.00"), "str": "é\u0000x", "date": dt.datetime(1960, 1, 1),
    "bin": Binary(b"\xff", 5), "oid": ObjectId(),
    "nested": {"z": 1, "a": [{"k": None}, [], {}]}, "regex": Regex("b", "xs"),
    "code": Code("g()", {"s": 1}), "ts": Timestamp(1, 1), "ref": DBRef("c", 5, "db"),
    "bool": False, "null": None, "min": MinKey(),
}  # fmt: skip


def _captured(raw: bytes) -> ChangeEvent:
    """The document as it reaches apply: decoded by capture, through the envelope's canonical
    Extended JSON, decoded again by apply."""
    doc = bson.decode(raw, _READ)
    key, key_type = canonical_key(doc["_id"])
    event = ChangeEvent(
        op="c", database="db", collection="c", key=key, key_type=key_type, seq="0" * 24,
        after=doc, source_ts_ms=1,
    )  # fmt: skip
    return decode_envelope(encode_envelope(event, "p", 1), event.kafka_key)


@pytest.mark.parametrize("doc_id", IDS, ids=[type(i).__name__ + str(n) for n, i in enumerate(IDS)])
def test_apply_hash_equals_the_hash_of_mongodbs_bytes(doc_id: Any) -> None:
    raw = bson.encode({"_id": doc_id, **FIELDS})
    event = _captured(raw)
    [(key, digest)] = raw_batch_hashes(raw)
    assert after_hash(event) == digest
    assert key == (event.key, event.key_type)


def after_hash(event: ChangeEvent) -> bytes:
    assert event.after is not None
    return document_bson_hash(event.after)


def test_a_raw_batch_gives_each_documents_key_and_hash_in_order() -> None:
    docs = [{"_id": i, "v": "x" * n} for n, i in enumerate(IDS)]
    raw = b"".join(bson.encode(d) for d in docs)
    found = raw_batch_hashes(raw)
    assert [k for k, _ in found] == [
        canonical_key(bson.decode(bson.encode(d), _READ)["_id"]) for d in docs
    ]
    assert [h for _, h in found] == [document_bson_hash(d) for d in docs]
    assert len({h for _, h in found}) == len(docs)


def test_an_id_that_is_not_first_is_still_found() -> None:
    doc = {"a": 1, "_id": ObjectId("65a1b2c3d4e5f60718293a4b")}
    assert raw_batch_hashes(bson.encode(doc))[0][0] == ("65a1b2c3d4e5f60718293a4b", "objectId")


def test_field_order_and_types_change_the_hash() -> None:
    base = document_bson_hash({"_id": 1, "a": 1, "b": 2})
    assert document_bson_hash({"_id": 1, "b": 2, "a": 1}) != base
    assert document_bson_hash({"_id": 1, "a": Int64(1), "b": 2}) != base
    assert document_bson_hash({"_id": 1, "a": 1.0, "b": 2}) != base
