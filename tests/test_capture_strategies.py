"""Capture strategies on a real mongod and Kafka: change_stream and oplog publish the same changes.

Published records are read back with an independent read_committed consumer. Tests never assert
timings: they poll conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from bson import Timestamp, json_util
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from pydantic import ValidationError
from pymongo import MongoClient

from lakeward.capture import (
    Capture,
    CaptureProgress,
    SourceCapture,
    build_capture,
    checkpoint_topic,
)
from lakeward.events import ChangeEvent, decode_envelope, make_seq
from lakeward.kafka.consumer import read_last_value
from lakeward.kafka.producer import ProducerFencedError
from lakeward.mongo.diff import apply_update_diff
from workflows.spec import PipelineSpec

STRATEGIES = ["change_stream", "oplog"]


# -- helpers shared with test_capture_faults.py ---------------------------------------------------


def make_spec(
    settings: Any, db: str, name: str, collections: list[str], **source: Any
) -> PipelineSpec:
    return PipelineSpec.model_validate(
        {
            "name": name,
            "source": {
                "uri": settings.mongo_uri,
                "database": db,
                "collections": collections,
                **source,
            },
        }
    )


def make_capture(
    settings: Any, spec: PipelineSpec, prefix: str, start_at: float, **kw: Any
) -> Capture:
    return build_capture(
        spec, settings.mongo_uri, settings.kafka_bootstrap, prefix, start_at=start_at, **kw
    )


@dataclass
class Running:
    task: asyncio.Task[CaptureProgress]
    progress: list[CaptureProgress]
    stop: Callable[[], None]


@contextlib.asynccontextmanager
async def running(capture: Capture) -> AsyncIterator[Running]:
    """Capture in a task; asks it to stop on exit and re-raises what it raised."""
    stopping = False
    seen: list[CaptureProgress] = []

    def stop() -> None:
        nonlocal stopping
        stopping = True

    task = asyncio.create_task(capture.run(seen.append, lambda: stopping))
    try:
        yield Running(task, seen, stop)
    finally:
        stop()
        with contextlib.suppress(ProducerFencedError):
            await asyncio.wait_for(task, 60)


async def eventually(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Poll until check() is truthy; fail naming `what` and the last value after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout}s; last value {last!r}")


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]

    @property
    def envelope(self) -> dict[str, Any]:
        return orjson.loads(self.value)

    @property
    def event(self) -> ChangeEvent:
        return decode_envelope(self.value, self.key)


class TopicReader:
    """An independent read_committed consumer that accumulates a topic's records."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.records: list[Record] = []
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"test-{uuid.uuid4().hex}",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        self._assigned = False
        self._at_end: set[int] = set()
        self._partitions: list[int] = []

    def poll(self, drain: bool = True) -> list[Record]:
        """Reads what is committed now (drain: up to the end of every partition, else one
        fetch); returns every record read so far."""
        if not self._assigned:
            metadata = self._consumer.list_topics(self.topic, timeout=10)
            topic = metadata.topics.get(self.topic)
            if topic is None or topic.error is not None or not topic.partitions:
                return self.records
            self._partitions = sorted(topic.partitions)
            self._consumer.assign(
                [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in self._partitions]
            )
            self._assigned = True
        # One read at least, then on until every partition is at its end (a partition leaves
        # the end when a record arrives and comes back with the next EOF event).
        deadline = time.monotonic() + 10
        first = True
        while first or (len(self._at_end) < len(self._partitions) and time.monotonic() < deadline):
            first = False
            for message in self._consumer.consume(1000, timeout=0.1):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        self._at_end.add(message.partition())
                        continue
                    raise AssertionError(f"consuming {self.topic}: {error}")
                self._at_end.discard(message.partition())
                self.records.append(
                    Record(
                        self.topic,
                        message.partition(),
                        message.offset(),
                        message.key(),
                        message.value(),
                        tuple(message.headers() or ()),
                    )
                )
        return self.records

    def close(self) -> None:
        self._consumer.close()


@contextlib.contextmanager
def reader(bootstrap: str, topic: str):
    topic_reader = TopicReader(bootstrap, topic)
    try:
        yield topic_reader
    finally:
        topic_reader.close()


def comparable(record: Record) -> dict[str, Any]:
    """An envelope without what legitimately differs between strategies and runs."""
    envelope = record.envelope
    envelope.pop("ts_ms")  # capture wall time
    envelope["source"].pop("resume_token")  # a change stream token vs an oplog ts
    return envelope


def oplog_now(client: MongoClient) -> float:
    """A start point just before the next write, in MongoDB's clock (epoch seconds)."""
    newest = client.local["oplog.rs"].find({}, {"ts": 1}).sort("$natural", -1).limit(1).next()
    ts: Timestamp = newest["ts"]
    return float(ts.time)


def write_every_kind_of_change(client: MongoClient, db: str) -> dict[str, Any]:
    """Insert, update (several diff shapes), replace, delete and a multi-document transaction."""
    orders = client[db].orders
    orders.insert_one({"_id": 1, "n": 1, "tags": ["a", "b"], "sub": {"p": 1, "q": 2}})
    orders.insert_one({"_id": "two", "n": 2})
    orders.insert_one({"_id": 3, "n": 3})
    orders.update_one(
        {"_id": 1},
        {"$set": {"n": 10, "sub.p": 5, "tags.1": "B", "extra": [1]}, "$unset": {"sub.q": ""}},
    )
    orders.update_one({"_id": 1}, {"$push": {"tags": "c"}})
    orders.replace_one({"_id": "two"}, {"n": 22, "replaced": True})
    orders.delete_one({"_id": 3})
    with client.start_session() as session, session.start_transaction():
        orders.insert_one({"_id": "t1", "n": 100}, session=session)
        client[db].other.insert_one({"_id": "elsewhere"}, session=session)  # not captured
        orders.update_one({"_id": 1}, {"$inc": {"n": 1}}, session=session)
        orders.insert_one({"_id": "t2", "n": 200}, session=session)
        orders.delete_one({"_id": "t2"}, session=session)
    return {"final": {d["_id"]: d for d in orders.find()}}


# -- pure -----------------------------------------------------------------------------------------


def test_spec_accepts_oplog_and_rejects_options_of_the_other_strategy(mongo) -> None:
    spec = make_spec(mongo, "d", "p", ["c"], capture="oplog", oplog_update="diff")
    assert spec.source.capture.value == "oplog"
    assert spec.source.on_history_lost.value == "fail"
    assert spec.source.full_document.value == "update_lookup"
    with pytest.raises(ValidationError, match="oplog_update applies to capture: oplog"):
        make_spec(mongo, "d", "p", ["c"], oplog_update="diff")
    with pytest.raises(ValidationError, match="oplog_update: diff"):
        make_spec(mongo, "d", "p", ["c"], capture="oplog", full_document="required")
    with pytest.raises(ValidationError, match="not available with capture: debezium"):
        make_spec(mongo, "d", "p", ["c"], capture="debezium", full_document="required")


def test_diff_keeps_mongodb_field_order() -> None:
    pre = {"_id": 1, "a": 1, "b": {"x": 1, "y": 2}, "c": [1, 2, 3], "d": 4}
    diff = {
        "$v": 2,
        "diff": {
            "d": {"d": False},
            "u": {"a": 2, "new_u": 1},
            "i": {"new_i": 1, "a2": 3},
            "sb": {"u": {"y": 3}, "i": {"z": 1}},
            "sc": {"a": True, "l": 5, "u0": 9},
        },
    }
    post = apply_update_diff(pre, diff)
    assert list(post) == ["_id", "a", "b", "c", "new_u", "new_i", "a2"]
    assert post["b"] == {"x": 1, "y": 3, "z": 1}
    assert post["c"] == [9, 2, 3, None, None]


# -- every operation through each strategy --------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_every_operation_type_through_each_strategy(mongo, kafka, unique, strategy) -> None:
    db, prefix = f"ops_{unique}", f"t{unique}"
    with MongoClient(mongo.mongo_uri) as client:
        start_at = oplog_now(client)
        write_every_kind_of_change(client, db)
    spec = make_spec(mongo, db, f"ops-{unique}", ["orders"], capture=strategy)
    topic = spec.topic(prefix, "orders")
    with reader(kafka.kafka_bootstrap, topic) as topic_reader:
        async with running(make_capture(kafka, spec, prefix, start_at)):
            records = await eventually(
                lambda: len(topic_reader.poll()) >= 11 and topic_reader.records, "11 changes"
            )
    events = [r.event for r in records]
    # Kafka orders per partition only; seq restores the source order.
    events.sort(key=lambda e: e.seq)
    assert [(e.op, e.key) for e in events] == [
        ("c", "1"),
        ("c", "two"),
        ("c", "3"),
        ("u", "1"),
        ("u", "1"),
        ("u", "two"),
        ("d", "3"),
        ("c", "t1"),
        ("u", "1"),
        ("c", "t2"),
        ("d", "t2"),
    ]
    assert events[5].after == {"_id": "two", "n": 22, "replaced": True}  # replacement
    assert events[6].after is None and events[6].document_key == {"_id": 3}
    # Updates carry the document looked up after the workload (update_lookup / lookup).
    assert events[3].after == events[8].after
    assert events[8].after is not None and events[8].after["n"] == 11

    transaction = events[7:]
    assert len({e.seq[:16] for e in transaction}) == 1, "one cluster time for the transaction"
    assert [int(e.seq[16:], 16) for e in transaction] == [0, 1, 2, 3]
    by_seq = {r.event.seq: r.envelope for r in records}
    sources = [by_seq[e.seq]["source"] for e in transaction]
    assert all(s["lsid"] and s["txnNumber"] is not None for s in sources)
    assert len({(s["lsid"], s["txnNumber"]) for s in sources}) == 1
    # Retryable writes are not transactions: no identity, like change streams report them.
    assert by_seq[events[0].seq]["source"]["txnNumber"] is None


# -- the two strategies agree ---------------------------------------------------------------------


@pytest.mark.parametrize("images", ["lookup", "exact"])
async def test_oplog_and_change_stream_publish_equal_envelopes(
    mongo, kafka, unique, images
) -> None:
    db, name = f"eq_{unique}", f"eq-{unique}"
    change_stream_options: dict[str, Any] = {}
    oplog_options: dict[str, Any] = {}
    if images == "exact":
        # Exact post-images and pre-images: MongoDB's own post-image vs the diff applied to the
        # stored pre-image by the oplog reader.
        shared = {"pre_images": True, "enable_pre_images": True}
        change_stream_options = {**shared, "full_document": "required"}
        oplog_options = {**shared, "oplog_update": "diff"}
    cs_spec = make_spec(mongo, db, name, ["orders"], **change_stream_options)
    op_spec = make_spec(mongo, db, name, ["orders"], capture="oplog", **oplog_options)
    if images == "exact":
        from lakeward.mongo.admin import enable_pre_and_post_images

        assert enable_pre_and_post_images(mongo.mongo_uri, db, ["orders"]) == ["orders"]
        assert enable_pre_and_post_images(mongo.mongo_uri, db, ["orders"]) == []
    with MongoClient(mongo.mongo_uri) as client:
        start_at = oplog_now(client)
        write_every_kind_of_change(client, db)
        orders = client[db].orders
        orders.update_one({"_id": 1}, {"$set": {"tags.0": {"deep": [1, {"x": 1}]}}})
        orders.update_one({"_id": 1}, {"$set": {"tags.0.deep.1.x": 2}, "$pop": {"extra": 1}})
        orders.update_one({"_id": 1}, [{"$set": {"sum": {"$add": ["$n", 1]}}}])
        orders.update_one({"_id": 1}, {"$rename": {"sub": "moved"}})
    published: dict[str, list[Record]] = {}
    for label, spec in (("change_stream", cs_spec), ("oplog", op_spec)):
        prefix = f"t{unique}{label[:2]}"
        with reader(kafka.kafka_bootstrap, spec.topic(prefix, "orders")) as topic_reader:
            async with running(make_capture(kafka, spec, prefix, start_at)):
                published[label] = await eventually(
                    lambda r=topic_reader: len(r.poll()) >= 15 and r.records, f"{label}: 15"
                )
    change_stream = sorted(map(comparable, published["change_stream"]), key=lambda e: e["seq"])
    oplog = sorted(map(comparable, published["oplog"]), key=lambda e: e["seq"])
    assert len(change_stream) == len(oplog) == 15
    for a, b in zip(change_stream, oplog, strict=True):
        assert a == b
    updates = [e for e in oplog if e["op"] == "u"]
    if images == "exact":
        # Point-in-time images: each update's `before` is the previous update's `after`.
        ones = [e for e in updates if '"_id": {"$numberInt": "1"}' in e["after"]]
        assert all(x["after"] == y["before"] for x, y in itertools.pairwise(ones))
    else:
        assert all(e["before"] is None for e in updates)


# -- checkpoints, fencing, crashes ----------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_restart_resumes_after_the_last_checkpoint(mongo, kafka, unique, strategy) -> None:
    db, prefix = f"rs_{unique}", f"t{unique}"
    spec = make_spec(mongo, db, f"rs-{unique}", ["orders"], capture=strategy)
    with (
        MongoClient(mongo.mongo_uri) as client,
        reader(kafka.kafka_bootstrap, spec.topic(prefix, "orders")) as topic_reader,
    ):
        orders = client[db].orders
        start_at = oplog_now(client)
        orders.insert_many([{"_id": i} for i in range(50)])
        async with running(make_capture(kafka, spec, prefix, start_at)) as first:
            await eventually(lambda: len(topic_reader.poll()) >= 50, "first 50")
        assert first.progress[-1].events == 50
        assert not first.progress[-1].resumed_from_checkpoint
        orders.insert_many([{"_id": i} for i in range(50, 80)])
        orders.update_many({"_id": {"$lt": 10}}, {"$set": {"x": 1}})
        async with running(make_capture(kafka, spec, prefix, start_at)) as second:
            await eventually(lambda: len(topic_reader.poll()) >= 90, "all 90")
            # Whatever it publishes next would be a duplicate: give it batches to do so.
            await eventually(lambda: len(second.progress) >= 3, "three idle rounds")
        records = topic_reader.poll()
    assert second.progress[-1].resumed_from_checkpoint
    assert second.progress[-1].events == 40
    identities = [(r.key, r.event.seq) for r in records]
    assert len(identities) == len(set(identities)) == 90


def _checkpoint_time(kafka: Any, prefix: str, key: bytes) -> Timestamp | None:
    raw = read_last_value(kafka.kafka_bootstrap, checkpoint_topic(prefix), key)
    if raw is None:
        return None
    checkpoint = json_util.loads(raw)
    if "ts" in checkpoint:  # oplog
        return checkpoint["ts"]
    data = checkpoint["_data"]  # a resume token's KeyString starts 0x82, seconds, increment
    return Timestamp(int(data[2:10], 16), int(data[10:18], 16))


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_idle_checkpoint_keeps_up_with_other_collections(mongo, kafka, unique, strategy):
    """No change of the pipeline's own, but a busy oplog: the checkpoint still moves, so a
    restart does not rescan (or lose to truncation) what other collections wrote."""
    db, prefix = f"id_{unique}", f"t{unique}"
    spec = make_spec(mongo, db, f"id-{unique}", ["orders"], capture=strategy)
    key = f"{spec.name}/{strategy}".encode()
    with MongoClient(mongo.mongo_uri) as client:
        async with running(make_capture(kafka, spec, prefix, oplog_now(client))) as run:
            await eventually(lambda: run.progress, "capture reading")
            client[db].other.insert_many([{"n": i} for i in range(100)])
            busy = client.local["oplog.rs"].find().sort("$natural", -1).limit(1).next()["ts"]
            await eventually(
                lambda: (_checkpoint_time(kafka, prefix, key) or Timestamp(0, 0)) >= busy,
                "the checkpoint past the other collection's writes",
            )
    assert run.progress[-1].events == 0


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_second_attempt_fences_the_first(mongo, kafka, unique, strategy) -> None:
    db, prefix = f"fe_{unique}", f"t{unique}"
    spec = make_spec(mongo, db, f"fe-{unique}", ["orders"], capture=strategy)
    with (
        MongoClient(mongo.mongo_uri) as client,
        reader(kafka.kafka_bootstrap, spec.topic(prefix, "orders")) as topic_reader,
    ):
        orders = client[db].orders
        start_at = oplog_now(client)
        zombie = make_capture(kafka, spec, prefix, start_at)
        successor = make_capture(kafka, spec, prefix, start_at)
        assert (
            zombie.transactional_id
            == successor.transactional_id
            == f"lakeward-{spec.name}-{strategy}"
        )
        async with running(zombie) as first:
            orders.insert_one({"_id": "before"})
            await eventually(lambda: len(topic_reader.poll()) >= 1, "the first change")
            async with running(successor) as second:
                await eventually(lambda: second.progress, "the successor reading changes")
                # The successor's init_transactions fenced the zombie: its next publish fails.
                orders.insert_one({"_id": "after"})
                with pytest.raises(ProducerFencedError):
                    await first.task
                await eventually(lambda: len(topic_reader.poll()) >= 2, "the second change")
        records = topic_reader.poll()
    assert sorted(r.event.key for r in records) == ["after", "before"]


# The capture child process for the kill -9 test: runs until killed, printing progress.
_CHILD = """
import asyncio, json, sys
from lakeward.capture import build_capture
from workflows.spec import PipelineSpec
args = json.loads(sys.argv[1])
spec = PipelineSpec.model_validate(args["spec"])
capture = build_capture(
    spec, args["mongo"], args["kafka"], args["prefix"], start_at=args["start_at"]
)
def on_batch(progress):
    print(json.dumps({"events": progress.events}), flush=True)
asyncio.run(capture.run(on_batch))
"""


def _start_child(
    mongo: Any, kafka: Any, spec: PipelineSpec, prefix: str, start_at: float, log: Path
) -> subprocess.Popen:
    args = {
        "spec": spec.model_dump(mode="json"),
        "mongo": mongo.mongo_uri,
        "kafka": kafka.kafka_bootstrap,
        "prefix": prefix,
        "start_at": start_at,
    }
    with log.open("wb") as stderr:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-c", _CHILD, json.dumps(args)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def _expected_changes(client: MongoClient, db: str, collection: str, after: Timestamp) -> set:
    """(Kafka key, seq) of every change, read straight from the oplog (no transactions here)."""
    expected = set()
    for entry in client.local["oplog.rs"].find({"ns": f"{db}.{collection}", "ts": {"$gt": after}}):
        _id = entry["o2"]["_id"] if entry["op"] == "u" else entry["o"]["_id"]
        key = f"number:{_id}".encode()
        expected.add((key, make_seq(entry["ts"].time, entry["ts"].inc, 0)))
    return expected


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_kill_9_mid_batch_loses_and_duplicates_nothing(
    mongo, kafka, unique, strategy, tmp_path
) -> None:
    db, prefix = f"k9_{unique}", f"t{unique}"
    spec = make_spec(mongo, db, f"k9-{unique}", ["orders"], capture=strategy)
    spec = spec.model_copy(
        update={"batching": spec.batching.model_copy(update={"max_records": 200})}
    )
    children: list[subprocess.Popen] = []
    try:
        with (
            MongoClient(mongo.mongo_uri) as client,
            reader(kafka.kafka_bootstrap, spec.topic(prefix, "orders")) as topic_reader,
        ):
            orders = client[db].orders
            start_ts = client.local["oplog.rs"].find().sort("$natural", -1).limit(1).next()["ts"]
            start_at = float(start_ts.time)
            children.append(_start_child(mongo, kafka, spec, prefix, start_at, tmp_path / "a.log"))
            victim = children[0]
            # Inserts keep coming before, during and after the kill, so the child dies with
            # a batch in hand and changes pile up while no capture runs.
            inserted = 0
            stop_at: int | None = None

            def write() -> None:
                nonlocal inserted
                with MongoClient(mongo.mongo_uri) as writer:
                    while stop_at is None or inserted < stop_at:
                        batch = range(inserted, inserted + 50)
                        writer[db].orders.insert_many([{"_id": j, "v": 0} for j in batch])
                        inserted += 50
                        time.sleep(0.01)

            thread = threading.Thread(target=write)
            thread.start()
            try:
                await eventually(
                    lambda: len(topic_reader.poll(drain=False)) >= 500, "capture under way", 120
                )
                os.kill(victim.pid, signal.SIGKILL)  # our own child, by PID
            finally:
                stop_at = max(inserted + 500, 3000)
                thread.join(120)
            assert victim.wait(30) == -signal.SIGKILL
            # Updates only touch documents that are never deleted, so no lookup comes back
            # empty and every oplog entry is a published change.
            orders.update_many({"_id": {"$lt": 1000}}, {"$inc": {"v": 1}})
            orders.delete_many({"_id": {"$gte": inserted - 500}})
            expected = _expected_changes(client, db, "orders", start_ts)
            assert len(expected) == inserted + 1000 + 500
            children.append(_start_child(mongo, kafka, spec, prefix, start_at, tmp_path / "b.log"))

            def all_published() -> bool:
                return {(r.key, r.event.seq) for r in topic_reader.poll()} >= expected

            await eventually(all_published, "every change published", 180)
            os.kill(children[1].pid, signal.SIGKILL)
            children[1].wait(30)
            records = topic_reader.poll()
        identities = [(r.key, r.event.seq) for r in records]
        assert len(identities) == len(set(identities)), "a change was published twice"
        assert set(identities) == expected
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(30)


async def test_checkpoint_key_and_transactional_id_per_strategy(mongo, kafka, unique) -> None:
    spec = make_spec(mongo, "d", f"ids-{unique}", ["c"], capture="oplog")
    capture = make_capture(kafka, spec, f"t{unique}", time.time())
    assert isinstance(capture, SourceCapture)
    assert capture.checkpoint_key == f"ids-{unique}/oplog".encode()
    legacy = make_capture(kafka, make_spec(mongo, "d", "orders", ["c"]), "lakeward", time.time())
    assert isinstance(legacy, SourceCapture)
    # Names of existing change-stream pipelines never change.
    assert legacy.checkpoint_key == b"orders/change_stream"
    assert legacy.transactional_id == "lakeward-orders-change_stream"
    assert checkpoint_topic("lakeward") == "lakeward._checkpoints"


# -- start-up cost ---------------------------------------------------------------------------


async def test_oplog_reader_from_a_start_time_scans_only_the_oplog_after_it(mongo, unique) -> None:
    """mongod starts an oplog scan at the `ts` bound only for increments below 2**31; a bound
    above that scanned the whole oplog before the first entry (seconds on a large oplog)."""
    from lakeward.mongo.oplog import OplogReader

    db = f"scan_{unique}"
    with MongoClient(mongo.mongo_uri) as client:
        client[db].filler.insert_many([{"n": n} for n in range(2000)])  # entries before the start
        start_at = oplog_now(client) + 1
        while oplog_now(client) < start_at:
            client[db].tick.insert_one({})
        client[db].orders.insert_one({"_id": 1})
        async with OplogReader(mongo.mongo_uri, db, ["orders"], start_at=start_at) as reader:
            bound = reader._filter(reader._last_ts)
            stats = client.local["oplog.rs"].find(bound).explain()["executionStats"]
            batch = await reader.next_batch(10, 0.1, 5.0)
    assert [e.key for e in batch.events] == ["1"]
    # Only entries from start_at on are examined, not the 2000 fillers (nor the rest of the oplog).
    assert stats["totalDocsExamined"] < 500, stats["totalDocsExamined"]
