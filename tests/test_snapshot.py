"""Snapshot: a collection copied range by range into Kafka as `r` events (real mongod, Kafka)."""

from __future__ import annotations

import asyncio
import itertools
import uuid

from bson import Decimal128, ObjectId
from confluent_kafka import Consumer
from pymongo import MongoClient

from lakeward.events import decode_envelope
from lakeward.snapshot import SnapshotCopier, decode_bound
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
    # Nothing happened in between, so both copies carry the same seq and document: the MERGE's
    # `newer seq wins` guard applies the second copy as a no-op.
    assert all(len(v) == 1 for v in by_key.values())
