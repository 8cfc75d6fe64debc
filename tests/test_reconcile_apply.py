"""Reconciliation over tables apply wrote (real Kafka and MongoDB, no pipeline): the `_hash`
column `fast` mode needs, and documents apply dead-letters."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
from confluent_kafka import Producer
from deltalake import DeltaTable
from pymongo import MongoClient

from lakeward.apply import BatchApplier
from lakeward.delta.table import CURRENT_STATE_SCHEMA, DEAD_LETTER_SCHEMA, TxnTable
from lakeward.events import ChangeEvent, canonical_key, encode_envelope, make_seq
from lakeward.kafka.admin import ensure_topic
from lakeward.kafka.consumer import PartitionReader
from lakeward.reconcile.engine import CollectionReconciler
from lakeward.reconcile.lake import LakeSide
from lakeward.rowhash import document_bson_hash
from workflows.spec import PipelineSpec

PREFIX = "rh"


def _spec(stack: Any, unique: str, lake: Path, **extra: Any) -> PipelineSpec:
    return PipelineSpec.model_validate(
        {"name": f"p{unique}", "source": {"uri": stack.mongo_uri, "database": f"db{unique}"},
         "sink": {"uri": str(lake)}, **extra}
    )  # fmt: skip


def _apply(stack: Any, spec: PipelineSpec, *batches: list[dict[str, Any]]) -> None:
    """Publish each batch of documents as snapshot reads into the collection's topic and apply
    it whole (with the spec's policy) before the next."""
    topic = spec.topic(PREFIX, "c")
    ensure_topic(stack.kafka_bootstrap, topic, partitions=1)
    producer = Producer({"bootstrap.servers": stack.kafka_bootstrap})
    applier = BatchApplier(
        spec.name,
        PartitionReader(stack.kafka_bootstrap, topic),
        TxnTable(spec.sink.table_uri(spec.source.database, "c"), CURRENT_STATE_SCHEMA),
        TxnTable(str(Path(spec.sink.uri) / "dead_letters"), DEAD_LETTER_SCHEMA),
        schema_policy=spec.schema_policy,
    )
    seq = 0
    for docs in batches:
        for doc in docs:
            seq += 1
            key, key_type = canonical_key(doc["_id"])
            event = ChangeEvent(
                op="r", database=spec.source.database, collection="c", key=key,
                key_type=key_type, seq=make_seq(1_700_000_000, seq, 0), after=doc,
                document_key={"_id": doc["_id"]},
            )  # fmt: skip
            value = encode_envelope(event, spec.name, 0)
            producer.produce(topic, key=event.kafka_key, value=value)
        assert producer.flush(30) == 0
        done, deadline = 0, time.monotonic() + 60
        while done < len(docs) and time.monotonic() < deadline:  # a read can come back empty
            outcome = applier.apply_once(max_records=100, max_wait_s=5, idle_s=1)
            done += outcome.applied + outcome.dead_letters
        assert done == len(docs)


def test_a_table_from_before_the_hash_gains_it_and_fast_mode_declines_its_old_rows(
    core_stack, unique, tmp_path
) -> None:
    spec = _spec(core_stack, unique, tmp_path)
    uri = spec.sink.table_uri(spec.source.database, "c")
    # A table as an earlier Lakeward created it: no `_hash` column.
    TxnTable(uri, pa.schema([f for f in CURRENT_STATE_SCHEMA if f.name != "_hash"])).ensure()
    docs = [{"_id": 1, "v": "a"}, {"_id": 2, "v": "b", "n": 5.5}]
    _apply(core_stack, spec, docs)

    rows = DeltaTable(uri).to_pyarrow_table()
    assert dict(zip(rows["_id"].to_pylist(), rows["_hash"].to_pylist(), strict=True)) == {
        "1": document_bson_hash(docs[0]),
        "2": document_bson_hash(docs[1]),
    }
    engine = CollectionReconciler(spec, "c", core_stack.mongo_uri, "", PREFIX, {})
    assert asyncio.run(engine.plan(1000, "fast")).mode == "fast"

    # A row applied before the column existed has no hash: fast mode would see every such row
    # as a candidate, so it runs deep.
    DeltaTable(uri).update(updates={"_hash": "NULL"}, predicate="_id = '2'")
    assert LakeSide(uri, {}, DeltaTable(uri).version()).live_rows_without_hash() == 1
    assert asyncio.run(engine.plan(1000, "fast")).mode == "deep"


def test_a_document_apply_dead_letters_is_reported_missing(core_stack, unique, tmp_path) -> None:
    spec = _spec(core_stack, unique, tmp_path, schema_policy="strict")
    docs = [{"_id": 1, "v": 1}, {"_id": 2, "v": "text"}, {"_id": 3, "v": 3}]
    mongo: MongoClient[dict[str, Any]] = MongoClient(core_stack.mongo_uri)
    try:
        mongo[spec.source.database]["c"].insert_many(docs)
        # Strict: once the column holds ints, "text" is dead-lettered.
        _apply(core_stack, spec, docs[:1], docs[1:])
        engine = CollectionReconciler(
            spec, "c", core_stack.mongo_uri, core_stack.kafka_bootstrap, PREFIX, {},
            settle_timeout_s=0,
        )  # fmt: skip
        for mode in ("fast", "deep"):
            plan = asyncio.run(engine.plan(1000, mode))
            found = asyncio.run(engine.candidates(plan.version, [(None, None)], plan.mode))
            assert found.keys == [("2", "number")], mode
        verified = asyncio.run(engine.verify([("1", "number"), ("2", "number")]))
        assert [(d.key, d.kind) for d in verified.differences] == [("2", "missing")]
        assert verified.unsettled == []
    finally:
        mongo.drop_database(spec.source.database)
        mongo.close()
