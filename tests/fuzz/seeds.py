"""Seed corpora for the fuzz harnesses, written into a directory libFuzzer may then grow.

Generated rather than committed: real envelopes (Lakeward's and Debezium's, as the decoder's
tests use them) and real specs, so mutations start from inputs that reach deep into the code.
The first byte of each seed selects the harness's raw-input mode (FuzzedDataProvider.ConsumeBool
reads the lowest bit of one byte).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from pathlib import Path

import orjson
import yaml
from bson import Binary, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp

from lakeward.events import ChangeEvent, canonical_key, encode_envelope, make_seq

__all__ = ["write_envelope_seeds", "write_spec_seeds"]

RAW_MODE = b"\x00"

_DOCUMENTS = [
    {"_id": ObjectId("5f43a1b2c3d4e5f601234567"), "n": 1},
    {
        "_id": {"k": Int64(1), "j": "x"},
        "price": Decimal128("1234567890.123456789012345678901234"),
        "born": dt.datetime(1901, 2, 3, 4, 5, 6, 789000, tzinfo=dt.UTC),
        "ratio": math.inf,
        "uuid": Binary.from_uuid(uuid.UUID(int=5)),
        "ts": Timestamp(1_700_000_000, 7),
        "re": Regex("^a.*", "i"),
        "lo": MinKey(),
        "hi": MaxKey(),
        "mixed": [1, "two", 3.5, None, {"x": []}],
    },
    {"_id": "s", "nested": {"a": {"b": [Decimal128("NaN")]}}},
]

_DEBEZIUM_AFTER = (
    '{"_id": 1,"i64": {"$numberLong": "7"},"inf": Infinity,"dec": {"$numberDecimal": "1.10"},'
    '"date": {"$date": -2177452800000},"bin": {"$binary": "AAE=","$type": "00"},'
    '"oid": {"$oid": "6b0871eb7b943bdd99a39ed0"},"ts": {"$timestamp": {"t": 5,"i": 6}}}'
)


def _debezium(op: str, after: str | None, total_order: int | None) -> bytes:
    transaction = {"id": "x:10", "total_order": total_order} if total_order else None
    source = {
        "connector": "mongodb",
        "name": "dbz",
        "ts_ms": 1_795_715_563_123,
        "db": "shop",
        "collection": "orders",
        "ord": 2,
        "lsid": None,
        "txnNumber": None,
    }
    body = {
        "before": None,
        "after": after,
        "source": source,
        "op": op,
        "ts_ms": 1,
        "transaction": transaction,
    }
    return orjson.dumps(body)


def write_envelope_seeds(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    seeds: list[bytes] = []
    for i, doc in enumerate(_DOCUMENTS):
        key, key_type = canonical_key(doc["_id"])
        for op in ("c", "u", "d", "r"):
            event = ChangeEvent(
                op=op,
                database="shop",
                collection="orders",
                key=key,
                key_type=key_type,
                seq=make_seq(1_700_000_000, i, 0),
                after=None if op == "d" else doc,
                before=doc if op != "c" else None,
                document_key={"_id": doc["_id"]},
            )
            seeds.append(encode_envelope(event, "p", 0))
    seeds += [
        _debezium("c", _DEBEZIUM_AFTER, None),
        _debezium("u", _DEBEZIUM_AFTER, 3),
        _debezium("d", None, None),
        _debezium("r", _DEBEZIUM_AFTER, None),
        b'{"ts_ms":1795715428167}',
        b'{"status":"BEGIN","id":"x:10","ts_ms":1}',
    ]
    for i, seed in enumerate(seeds):
        (folder / f"seed-{i:03d}").write_bytes(RAW_MODE + seed)


_SPECS = [
    {
        "name": "orders",
        "source": {
            "uri": "mongodb://127.0.0.1:27017/?replicaSet=rs0",
            "database": "shop",
            "collections": ["orders"],
            "capture": "change_stream",
        },
        "sink": {"uri": "./.lakeward/lake"},
    },
    {
        "name": "all-of-it",
        "source": {
            "uri": "env:MONGO_URI",
            "database": "shop",
            "capture": "oplog",
            "oplog_update": "diff",
            "pre_images": True,
        },
        "sink": {
            "uri": "s3://lake/prefix",
            "change_log": True,
            "storage_options": {"AWS_REGION": "eu-1", "AWS_SECRET_ACCESS_KEY": "env:S"},
        },
        "batching": {"max_records": 500, "min_records": 10, "adaptive_max_records": 1000},
        "snapshot": {"mode": "when_needed", "parallelism": 4},
        "schema_policy": "coerce",
        "maintenance": {"interval_minutes": 5},
        "reconcile": {"schedule": "0 3 * * *", "mode": "deep", "repair": True},
    },
]


def write_spec_seeds(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, spec in enumerate(_SPECS):
        (folder / f"json-{i}").write_bytes(RAW_MODE + json.dumps(spec).encode())
        (folder / f"yaml-{i}").write_bytes(b"\x01" + yaml.safe_dump(spec).encode())
