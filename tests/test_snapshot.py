"""Snapshot: a collection copied range by range into Kafka as `r` events (real mongod, Kafka)."""

from __future__ import annotations

import asyncio
import itertools
import uuid

from bson import Decimal128, ObjectId, Timestamp
from confluent_kafka import Consumer
from pymongo import MongoClient

from lakeward.events import decode_envelope
from lakeward.snapshot import CopiedRange, SnapshotCopier, decode_bound
from workflows.spec import PipelineSpec


def _spec(settings, db: str, name: str) -> PipelineSpec:
    source = {"uri": settings.mongo_uri, "database": db, "collections": ["docs"]}
    return PipelineSpec.model_validate({"name": name, "source": source})


def _read_all(bootstrap: str, topic: str, expected: int) -> list:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": uuid.uuid4().hex,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    events = []
    try:
        for _ in range(600):
            for message in consumer.consume(1000, timeout=0.2):
                if message.error() is None:
                    events.append(decode_envelope(message.value(), message.key()))
            if len(events) >= expected:
                break
    finally:
        consumer.close()
    return events


MIXED_IDS = (
    [i for i in range(1500)]
    + [f"s{i:05d}" for i in range(1500)]
    + [ObjectId() for _ in range(1500)]
    + [Decimal128(f"{i}.5") for i in range(500)]
    + [{"a": i} for i in range(500)]
)


async def test_ranges_cover_mixed_id_types_exactly_once(core_stack, unique) -> None:
    db = f"snap_{unique}"
    with MongoClient(core_stack.mongo_uri) as client:
        client[db].docs.insert_many([{"_id": i, "n": n} for n, i in enumerate(MIXED_IDS)])
    spec = _spec(core_stack, db, f"snap-{unique}")
    copier = SnapshotCopier(
        spec, "docs", core_stack.mongo_uri, core_stack.kafka_bootstrap, f"t{unique}"
    )
    ranges = await copier.plan(range_docs=1000)
    assert len(ranges) >= 4
    assert ranges[0].lower is None and ranges[-1].upper is None
    assert all(a.upper == b.lower for a, b in itertools.pairwise(ranges))
    uppers = [decode_bound(r.upper) for r in ranges[:-1]]
    assert len({type(u) for u in uppers}) > 1, "split points should span several _id types"

    copies = await asyncio.gather(*(copier.copy(r) for r in ranges))
    assert sum(c.documents for c in copies) == len(MIXED_IDS)
    assert all(c.offsets for c in copies if c.documents)

    events = _read_all(core_stack.kafka_bootstrap, copier.topic, len(MIXED_IDS))
    keys = [(e.key, e.key_type) for e in events]
    assert len(keys) == len(set(keys)) == len(MIXED_IDS)
    assert {e.op for e in events} == {"r"}
    assert len({e.seq for e in events}) <= len(ranges)


async def test_a_recopied_range_changes_nothing_downstream(core_stack, unique) -> None:
    """A range copied twice (a crash before its activity finished) yields identical rows."""
    db = f"snap_{unique}"
    with MongoClient(core_stack.mongo_uri) as client:
        client[db].docs.insert_many([{"_id": i} for i in range(300)])
    spec = _spec(core_stack, db, f"re-{unique}")
    copier = SnapshotCopier(
        spec, "docs", core_stack.mongo_uri, core_stack.kafka_bootstrap, f"t{unique}"
    )
    (only,) = await copier.plan(range_docs=10_000)
    assert (await copier.copy(only)).documents == 300
    assert (await copier.copy(only)).documents == 300
    events = _read_all(core_stack.kafka_bootstrap, copier.topic, 600)
    by_key: dict = {}
    for e in events:
        by_key.setdefault(e.key, set()).add((e.seq, str(e.after)))
    assert len(by_key) == 300
    # Nothing changed the documents in between, so both copies carry the same document; their
    # seq is the same too unless the cluster time moved (another write anywhere, the replica
    # set's periodic no-op), and then the second copy rewrites each row with itself.
    assert all(len({doc for _, doc in v}) == 1 for v in by_key.values())


async def test_snapshot_of_100k_documents_with_concurrent_writes_converges(
    core_stack, unique, tmp_path
) -> None:
    """The issue's convergence test at full size, without the workflow: the stream runs from a
    point before the copy, four ranges are copied two at a time while documents are updated,
    deleted and inserted, and apply (tombstones kept, then purged and swept) makes the Delta
    table equal to the collection."""
    import pyarrow as pa

    from lakeward import duck
    from lakeward.apply import BatchApplier, documents
    from lakeward.delta.table import CURRENT_STATE_SCHEMA, DEAD_LETTER_SCHEMA, TxnTable
    from lakeward.kafka.consumer import PartitionReader
    from tests.test_capture_strategies import make_capture, oplog_now, running

    db, prefix = f"big_{unique}", f"t{unique}"
    spec = _spec(core_stack, db, f"big-{unique}")
    with MongoClient(core_stack.mongo_uri) as client:
        docs = client[db].docs
        docs.insert_many([{"_id": i, "n": i, "state": "old"} for i in range(100_000)])
        start_at = oplog_now(client)
    copier = SnapshotCopier(spec, "docs", core_stack.mongo_uri, core_stack.kafka_bootstrap, prefix)
    ranges = await copier.plan(range_docs=25_000)
    assert len(ranges) >= 3

    async def writes() -> None:
        def write() -> None:
            with MongoClient(core_stack.mongo_uri) as client:
                docs = client[db].docs
                for i in range(0, 100_000, 97):
                    docs.update_one({"_id": i}, {"$set": {"state": "new"}, "$inc": {"n": 1}})
                docs.delete_many({"_id": {"$in": list(range(5, 100_000, 89))}})
                docs.insert_many([{"_id": 200_000 + i, "state": "born"} for i in range(500)])

        await asyncio.to_thread(write)

    bound = asyncio.Semaphore(2)

    async def copy(key_range) -> CopiedRange:
        async with bound:
            return await copier.copy(key_range)

    async with running(make_capture(core_stack, spec, prefix, start_at)) as run:
        copied, _ = await asyncio.gather(asyncio.gather(*(copy(r) for r in ranges)), writes())
        with MongoClient(core_stack.mongo_uri) as client:
            expected = {str(d["_id"]): d for d in client[db].docs.find()}
            # Every change from the stream's start on (no transactions here: one entry each).
            since = {"ns": f"{db}.docs", "ts": {"$gte": Timestamp(int(start_at), 0)}}
            changes = client.local["oplog.rs"].count_documents(since)
        await _until(
            # (updates of documents deleted before their lookup are skipped: the delete follows)
            lambda: run.progress and run.progress[-1].events + run.progress[-1].skipped >= changes,
            lambda: f"{changes} changes, capture at {run.progress[-1:]}",
        )
    assert sum(c.documents for c in copied) >= 98_000

    table = TxnTable(str(tmp_path / "docs"), CURRENT_STATE_SCHEMA)
    reader = PartitionReader(core_stack.kafka_bootstrap, copier.topic)
    applier = BatchApplier(
        spec.name, reader, table, TxnTable(str(tmp_path / "dl"), DEAD_LETTER_SCHEMA)
    )
    try:
        while applier.apply_once(50_000, 2.0, 2.0, keep_tombstones=True).records:
            pass
        sweep_before = min(c.seq for c in copied)
        outcome = applier.apply_once(
            1, 0.1, 0.1, purge_tombstones=True, sweep_before_seq=sweep_before
        )
    finally:
        reader.close()
    assert outcome.tombstones_purged > 0  # deletes of copied documents were kept until here
    assert outcome.rows_swept == 0  # every live document has a row at least as new as the copy
    rows = duck.connect().execute(f"SELECT * FROM delta_scan('{tmp_path / 'docs'}')").arrow()
    if not isinstance(rows, pa.Table):
        rows = rows.read_all()
    assert dict(zip(rows.column("_id").to_pylist(), documents(rows), strict=True)) == expected


async def _until(check, what, timeout: float = 120.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, what()
        await asyncio.sleep(0.2)
