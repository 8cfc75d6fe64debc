"""The envelope contract: the real Debezium MongoDB connector and Lakeward's own change-stream
capture record the same changes, and Lakeward's decoder turns both into the same rows.

Both captures start at the same operation time, after every change was made, so their update
lookups read the same (final) documents. Every field apply uses is compared: op, key, key type,
the document as the canonical Extended JSON apply stores (it tells int32, int64 and double
apart), seq (cluster time and position in a transaction), and the transaction identity.

Where the two differ it is asserted, not hidden (docs/debezium.md):
- an update whose document was deleted before the lookup: Lakeward's capture drops it, Debezium
  writes it without `after` and the decoder raises NotAChangeError("update_without_document");
- `source_ts_ms`: Lakeward's is the wall clock; the connector Lakeward configures carries the
  cluster time's second with the wall clock's milliseconds, so they differ by under a second;
- Debezium's Kafka key is relaxed Extended JSON (NumberLong(1) becomes 1); deletes here carry no
  pre-image, so their key comes from it and must still name the row: keys are compared too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import re
import struct
import time
import uuid
from collections import Counter
from typing import Any

import pytest
from bson import Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.raw_bson import RawBSONDocument
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from pymongo import MongoClient
from pymongo.database import Database

from lakeward.capture import build_capture
from lakeward.debezium import DebeziumCapture
from lakeward.events import NotAChangeError, canonical_key, decode_envelope, document_json
from lakeward.generate import Generator, run
from lakeward.settings import StackSettings
from workflows.spec import PipelineSpec

pytestmark = pytest.mark.slow

COLLECTIONS = ("orders", "payments")
END = "~end"  # the last change of each collection: once both captures wrote it, they are done
# ... as it appears inside an envelope's `after` string (Debezium writes a space after the colon).
_END_MARK = re.compile(r'\\"_id\\": ?\\"' + re.escape(END) + r'\\"')

AWKWARD: dict[str, Any] = {
    "i32": 5,
    "i64": Int64(7),
    "i64_big": Int64(2**62),
    "d": 1.0,
    "d_frac": 2.5,
    "d_big": 1e20,
    "d_tiny": 1e-7,
    "d_inf": math.inf,
    "d_neg_inf": -math.inf,
    "d_nan": math.nan,
    "d_neg_zero": -0.0,
    "dec": Decimal128("1234567890.123456789012345678901234"),
    "dec_trailing": Decimal128("1.10"),
    "dec_nan": Decimal128("NaN"),
    "old": dt.datetime(1066, 10, 14, 9, 30, tzinfo=dt.UTC),
    "pre_epoch": dt.datetime(1901, 2, 3, 4, 5, 6, 789000, tzinfo=dt.UTC),
    "far": dt.datetime(2300, 1, 1, tzinfo=dt.UTC),
    "bin": Binary(b"\x00\x01\xff", 0),
    "bin_user": Binary(b"\x02", 128),
    "uuid": Binary(uuid.UUID("12345678-1234-5678-1234-567812345678").bytes, 4),
    "oid": ObjectId("5f43a1b2c3d4e5f601234567"),
    "re": Regex("^a.*$", "im"),
    "ts": Timestamp(1_700_000_000, 7),
    "lo": MinKey(),
    "hi": MaxKey(),
    "code": Code("function () { return 1; }"),
    "code_scope": Code("x + y", {"x": 1, "y": Int64(2)}),
    "text": 'quotes " and \\ and \u00e9\u4e2d\U0001f600 and \n',
    "nested": {"a": [1, Int64(2), 3.0, Decimal128("4"), None, True, {"b": []}], "c": {}},
    "$dollar": 1,
    "dot.ted": 2,
}

IDS: list[Any] = [
    ObjectId("6b0871eb7b943bdd99a39ed0"),
    "a-string-id",
    42,
    Int64(2**40),
    2.5,
    Binary(uuid.UUID(int=9).bytes, 4),
    dt.datetime(2020, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC),
    Decimal128("7.25"),
    {"k": Int64(1), "j": "x"},  # relaxed JSON in Debezium's key writes NumberLong(1) as 1
]


def _legacy_types_document() -> RawBSONDocument:
    """Deprecated BSON types pymongo cannot write: undefined, symbol, DBPointer."""

    def cstring(s: str) -> bytes:
        return s.encode() + b"\0"

    def string(s: str) -> bytes:
        raw = s.encode() + b"\0"
        return struct.pack("<i", len(raw)) + raw

    oid = ObjectId("5f43a1b2c3d4e5f601234567").binary
    elements = (
        b"\x02" + cstring("_id") + string("legacy-types")
        + b"\x06" + cstring("undefined")
        + b"\x0e" + cstring("symbol") + string("a-symbol")
        + b"\x0c" + cstring("pointer") + string("shop.other") + oid
    )  # fmt: skip
    body = elements + b"\0"
    return RawBSONDocument(struct.pack("<i", len(body) + 4) + body)


def _write_workload(db: Database) -> None:
    orders, payments = db.orders, db.payments
    client = db.client
    # Inserts: awkward values under every kind of _id, and deprecated types.
    orders.insert_many([{"_id": i, **AWKWARD, "n": n} for n, i in enumerate(IDS)])
    orders.insert_one(_legacy_types_document())
    # Generated documents with a mix of operations, some batches in transactions.
    generator = Generator(seed=20260401, mix="insert:50,update:25,replace:10,delete:15")
    run(orders, generator.batches(120, initial=30, batch_size=15, transactions=0.4), prefetch=0)
    # Updates that change types, unset and push; a replace; deletes by awkward _id.
    orders.update_one({"_id": 42}, {"$set": {"i32": Int64(5), "d": 1}, "$unset": {"i64": ""}})
    orders.update_one({"_id": "a-string-id"}, {"$push": {"nested.a": Decimal128("-0")}})
    orders.replace_one({"_id": 2.5}, {"replaced": True, "when": dt.datetime(2024, 5, 1)})
    orders.delete_one({"_id": {"k": 1, "j": "x"}})
    orders.delete_one({"_id": 2**40})
    # An update whose document is gone by the time either capture looks it up.
    orders.insert_one({"_id": "short-lived", "v": 1})
    orders.update_one({"_id": "short-lived"}, {"$set": {"v": 2}})
    orders.delete_one({"_id": "short-lived"})
    # One multi-document transaction over both collections, touching one document twice.
    with client.start_session() as session, session.start_transaction():
        payments.insert_one(
            {"_id": "p1", "order": 42, "amount": Decimal128("9.99")}, session=session
        )
        orders.update_one({"_id": 42}, {"$inc": {"i32": 1}}, session=session)
        orders.insert_one({"_id": "in-txn", "step": 1}, session=session)
        orders.update_one({"_id": "in-txn"}, {"$set": {"step": 2}}, session=session)
        payments.insert_one({"_id": "p2", "amount": 1.5}, session=session)
        payments.delete_one({"_id": "p2"}, session=session)
        db.unlisted.insert_one({"_id": "not captured"}, session=session)
        orders.delete_one({"_id": "a-string-id"}, session=session)
    for collection in (orders, payments):
        collection.insert_one({"_id": END})


async def _read_topics(
    settings: StackSettings, topics: list[str], tasks: list[asyncio.Task], timeout: float = 180
) -> dict[str, list[tuple[bytes | None, bytes | None]]]:
    """(key, value) of every committed record of each topic, once each topic holds its END."""
    deadline = time.monotonic() + timeout
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    while not set(topics) <= set(admin.list_topics(timeout=10).topics):
        _check(tasks, deadline, "topics were not created")
        await asyncio.sleep(0.5)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"contract-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    metadata = consumer.list_topics(timeout=10).topics
    consumer.assign(
        [TopicPartition(t, p, 0) for t in topics for p in sorted(metadata[t].partitions)]
    )
    records: dict[str, list[tuple[bytes | None, bytes | None]]] = {t: [] for t in topics}
    ended: set[str] = set()
    quiet_since: float | None = None
    try:
        while True:
            messages = await asyncio.to_thread(consumer.consume, 500, 0.5)
            for message in messages:
                assert message.error() is None, message.error()
                records[message.topic()].append((message.key(), message.value()))
                if message.value() and _END_MARK.search(message.value().decode()):
                    ended.add(message.topic())
            now = time.monotonic()
            quiet_since = None if messages else (quiet_since or now)
            if ended == set(topics) and quiet_since is not None and now - quiet_since >= 2:
                return records
            _check(tasks, deadline, f"only {sorted(ended)} of {topics} reached their end")
    finally:
        consumer.close()


def _check(tasks: list[asyncio.Task], deadline: float, what: str) -> None:
    for task in tasks:
        if task.done() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    assert time.monotonic() < deadline, what


Row = tuple[str, str, str, str, str | None, str | None, int | None]


def _decode(records: list[tuple[bytes | None, bytes | None]]) -> tuple[list[Row], Counter, dict]:
    """Rows sorted by seq, NotAChange kinds counted, and source_ts_ms per seq."""
    rows: list[Row] = []
    skipped: Counter = Counter()
    source_ts: dict[str, int] = {}
    for key, value in records:
        try:
            event = decode_envelope(value, key)
        except NotAChangeError as exc:
            skipped[exc.kind] += 1
            continue
        rows.append(
            (
                event.seq,
                event.op,
                event.key,
                event.key_type,
                None if event.after is None else document_json(event.after),
                None if event.lsid is None else document_json(event.lsid),
                event.txn_number,
            )
        )
        source_ts[event.seq] = event.source_ts_ms
    return sorted(rows), skipped, source_ts


async def test_debezium_and_lakeward_envelopes_decode_to_the_same_rows(test_stack, unique) -> None:
    settings = test_stack.need("mongo", "kafka", "connect")
    db_name = f"contract_{unique}"
    spec = PipelineSpec.model_validate(
        {
            "name": f"contract-{unique}",
            "source": {"uri": settings.mongo_uri, "database": db_name,
                       "collections": list(COLLECTIONS)},
        }
    )  # fmt: skip
    ours, theirs = f"lw{unique}", f"dbz{unique}"
    with MongoClient(settings.mongo_uri, tz_aware=True) as mongo:
        start_at = mongo.admin.command("hello")["operationTime"].time - 1
        _write_workload(mongo[db_name])
        lakeward = build_capture(
            spec, settings.mongo_uri, settings.kafka_bootstrap, ours, start_at=start_at
        )
        debezium = DebeziumCapture(
            spec, settings.mongo_uri, settings.kafka_bootstrap, theirs,
            connect_url=f"http://{settings.host}:{settings.connect_port}",
            start_at=start_at, poll_s=0.5,
        )  # fmt: skip
        stopping = False
        tasks = [
            asyncio.create_task(capture.run(lambda p: None, lambda: stopping))
            for capture in (lakeward, debezium)
        ]
        try:
            records = await _read_topics(
                settings,
                [spec.topic(prefix, c) for prefix in (ours, theirs) for c in COLLECTIONS],
                tasks,
            )
        finally:
            stopping = True
            done = await asyncio.gather(*tasks, return_exceptions=True)
            await debezium.delete_connector()
            mongo.drop_database(db_name)
    assert not [d for d in done if isinstance(d, BaseException)], done

    for collection in COLLECTIONS:
        lw_rows, lw_skipped, lw_ts = _decode(records[spec.topic(ours, collection)])
        dbz_rows, dbz_skipped, dbz_ts = _decode(records[spec.topic(theirs, collection)])
        assert lw_rows == dbz_rows, collection
        assert len({row[0] for row in lw_rows}) == len(lw_rows), "seqs are unique"
        # The documented differences, asserted rather than hidden.
        assert lw_skipped == Counter()
        if collection == "orders":
            assert dbz_skipped["update_without_document"] >= 1  # "short-lived" at least
            assert set(dbz_skipped) == {"update_without_document"}
            assert len(lw_rows) > 150
            ops = Counter(row[1] for row in lw_rows)
            assert all(ops[op] for op in "cud"), ops
            transactional = [row for row in lw_rows if row[6] is not None]
            assert len({row[0][:16] for row in transactional}) >= 2  # several transactions
            assert any(row[0][16:] != "00000000" for row in transactional)  # positions
        else:
            assert not dbz_skipped
        assert all(abs(lw_ts[seq] - dbz_ts[seq]) < 1000 for seq in lw_ts)

    # Debezium's key is relaxed Extended JSON: it lost the NumberLong of the compound _id's "k"
    # (a delete without pre-image has nothing else), yet it names the same row.
    (compound_delete,) = [
        (key, value)
        for key, value in records[spec.topic(theirs, "orders")]
        if key == b'{"id":"{\\"k\\": 1,\\"j\\": \\"x\\"}"}' and b'"op":"d"' in (value or b"")
    ]
    event = decode_envelope(compound_delete[1], compound_delete[0])
    assert (event.key, event.key_type) == canonical_key({"k": Int64(1), "j": "x"})
