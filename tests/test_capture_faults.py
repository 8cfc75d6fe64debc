"""Capture faults on a real mongod and Kafka: clear errors, or documented behaviour, and no loss.

The lost-history tests do not shrink the oplog (filling even MongoDB's smallest oplog, 990 MB, is
too slow here): they hand capture a resume point that is not in the oplog, a fabricated resume
token or an oplog timestamp before the oldest entry, which is what a lost history looks like.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from bson import Timestamp, json_util
from bson.json_util import CANONICAL_JSON_OPTIONS
from pymongo import MongoClient

from lakeward.apply import DeadLetterApplier
from lakeward.capture import SourceCapture, build_capture, checkpoint_topic, dead_letter_topic
from lakeward.delta.table import DEAD_LETTER_SCHEMA, TxnTable
from lakeward.kafka.admin import ensure_topic
from lakeward.kafka.consumer import PartitionReader
from lakeward.kafka.producer import OutgoingRecord, TransactionalPublisher
from lakeward.mongo.admin import ping
from lakeward.mongo.errors import CaptureSourceError, HistoryLostError
from lakeward.mongo.oplog import OplogReader
from lakeward.stack.servers import MongoServer
from tests.test_capture_strategies import (
    STRATEGIES,
    comparable,
    eventually,
    make_capture,
    make_spec,
    oplog_now,
    reader,
    running,
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def private_mongod(root: Path, *args: str, what: str = "private mongod") -> Iterator[int]:
    """A mongod of the test's own on a free loopback port, data and log under `root`; yields
    the port once it answers, and stops the process (by its handle) afterwards."""
    port = _free_port()
    (root / "data").mkdir()
    log_path = root / "mongod.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(MongoServer.binary()), "--bind_ip", "127.0.0.1", "--port", str(port),
             "--dbpath", str(root / "data"), "--wiredTigerCacheSizeGB", "0.25", *args],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not ping("127.0.0.1", port):  # ping needs no login
            assert process.poll() is None, log_path.read_text()[-2000:]
            assert time.monotonic() < deadline, f"{what} did not answer within 60s"
            time.sleep(0.1)
        yield port
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Stop a server the test started: by its handle, SIGTERM, then SIGKILL after 30 s."""
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(30)


@contextlib.contextmanager
def standalone_mongod(tmp_path: Path) -> Iterator[str]:
    """A private mongod without --replSet (the stack's MongoServer arguments otherwise)."""
    root = tmp_path / "standalone"
    root.mkdir()
    with private_mongod(root, what="standalone mongod") as port:
        yield f"mongodb://127.0.0.1:{port}/"


def _publish_checkpoint(kafka: Any, prefix: str, key: bytes, checkpoint: dict[str, Any]) -> None:
    """Commit a checkpoint as capture would (a lost history is a checkpoint not in the oplog)."""
    topic = checkpoint_topic(prefix)
    ensure_topic(kafka.kafka_bootstrap, topic, partitions=1)
    publisher = TransactionalPublisher(kafka.kafka_bootstrap, f"test-{prefix}-fabricate")
    value = json_util.dumps(checkpoint, json_options=CANONICAL_JSON_OPTIONS).encode()
    publisher.publish([], OutgoingRecord(topic=topic, key=key, value=value))
    publisher.close()


# -- no replica set -------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_no_replica_set_is_a_clear_error(kafka, unique, tmp_path, strategy) -> None:
    with standalone_mongod(tmp_path) as uri:
        spec = make_spec(kafka, "shop", f"nors-{unique}", ["orders"], capture=strategy)
        capture = build_capture(spec, uri, kafka.kafka_bootstrap, f"t{unique}", start_at=None)
        with pytest.raises(CaptureSourceError, match="replica set") as caught:
            await capture.run(lambda progress: None)
    assert "--replSet" in str(caught.value)
    assert not isinstance(caught.value, HistoryLostError)


# -- the resume point is gone ---------------------------------------------------------------------


def _real_resume_token(mongo: Any, db: str, collection: str) -> dict[str, Any]:
    """The resume token of a fresh insert into db.collection."""
    with MongoClient(mongo.mongo_uri) as client:
        start = client.local["oplog.rs"].find().sort("$natural", -1).limit(1).next()["ts"]
        client[db][collection].insert_one({"_id": "probe"})
        with client[db].watch(
            [{"$match": {"ns.coll": collection}}], start_at_operation_time=start
        ) as stream:
            deadline = time.monotonic() + 30
            change = stream.try_next()
            while change is None and time.monotonic() < deadline:
                change = stream.try_next()
    assert change is not None, "no change for the probe insert"
    return change["_id"]


def _token_at(token: dict[str, Any], seconds: int, increment: int) -> dict[str, Any]:
    """The token with another cluster time (its KeyString starts 0x82, seconds, increment)."""
    return {"_data": "82" + f"{seconds:08X}{increment:08X}" + token["_data"][18:]}


@pytest.mark.parametrize(
    ("strategy", "where"),
    [
        ("change_stream", "before_the_oldest_entry"),
        ("change_stream", "not_in_the_oplog"),
        ("oplog", "before_the_oldest_entry"),
    ],
)
async def test_lost_resume_point_is_history_lost_naming_the_fix(
    mongo, kafka, unique, strategy, where
) -> None:
    db, prefix = f"hl_{unique}", f"t{unique}"
    spec = make_spec(mongo, db, f"hl-{unique}", ["orders"], capture=strategy)
    if strategy == "oplog":
        checkpoint: dict[str, Any] = {"ts": Timestamp(1, 1)}
    else:
        token = _real_resume_token(mongo, db, "orders")
        seconds, increment = int(token["_data"][2:10], 16), int(token["_data"][10:18], 16)
        if where == "before_the_oldest_entry":
            # Cluster time (1, 1): Lakeward's own check at open, before any change arrives.
            checkpoint = _token_at(token, 1, 1)
        else:
            # A recent cluster time whose event is not the token's: the server's own check
            # (ChangeStreamFatalError) when the next change of the collection arrives.
            checkpoint = _token_at(token, seconds, increment - 1)
    capture = make_capture(kafka, spec, prefix, time.time())
    _publish_checkpoint(kafka, prefix, f"{spec.name}/{strategy}".encode(), checkpoint)
    with pytest.raises(HistoryLostError) as caught:
        await asyncio.wait_for(capture.run(lambda progress: None), 120)
    message = str(caught.value)
    assert "the resume point is gone from the oplog" in message
    assert "on_history_lost: resnapshot" in message and "enlarge the oplog" in message
    assert isinstance(caught.value, CaptureSourceError)  # the activity's terminal error type
    assert spec.source.on_history_lost.value == "fail"

    # The way back (what a re-snapshot does): forget the checkpoint, start at a new point.
    assert isinstance(capture, SourceCapture)
    await capture.reset_checkpoint()
    with MongoClient(mongo.mongo_uri) as client:
        restart_at = oplog_now(client)
        client[db].orders.insert_one({"_id": "after-reset"})
    with reader(kafka.kafka_bootstrap, spec.topic(prefix, "orders")) as data:
        async with running(make_capture(kafka, spec, prefix, restart_at)) as run:
            await eventually(
                lambda: "after-reset" in {r.event.key for r in data.poll()},
                "the change after the reset",
            )
    assert not run.progress[-1].resumed_from_checkpoint


async def test_oplog_start_before_the_oldest_entry_is_history_lost(mongo) -> None:
    # The pipeline's creation time, long gone: an oplog reader cannot start there.
    reader = OplogReader(mongo.mongo_uri, "shop", ["orders"], start_at=1.0)
    with pytest.raises(HistoryLostError, match="oldest oplog entry"):
        async with reader:
            pass


# -- dropped collections and databases ------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_drops_are_skipped_counted_and_capture_goes_on(mongo, kafka, unique, strategy):
    db, prefix = f"dr_{unique}", f"t{unique}"
    spec = make_spec(mongo, db, f"dr-{unique}", ["a", "b"], capture=strategy)
    with MongoClient(mongo.mongo_uri) as client:
        start_at = oplog_now(client)
        client[db].a.insert_one({"_id": "a1"})
        client[db].b.insert_one({"_id": "b1"})
        client[db].drop_collection("a")  # a database watch is not invalidated by this
        client[db].a.insert_one({"_id": "a2"})  # the collection again, under the same name
        client[db].b.rename("b_old")
        client[db].b.insert_one({"_id": "b2"})
        client.drop_database(db)  # drops a and b_old, then the database: invalidates the stream
        client[db].a.insert_one({"_id": "a3"})
        client[db].b.insert_one({"_id": "b3"})
    capture = make_capture(kafka, spec, prefix, start_at)
    with (
        reader(kafka.kafka_bootstrap, spec.topic(prefix, "a")) as topic_a,
        reader(kafka.kafka_bootstrap, spec.topic(prefix, "b")) as topic_b,
    ):
        async with running(capture) as run:
            await eventually(
                lambda: len(topic_a.poll()) >= 3 and len(topic_b.poll()) >= 3, "data after drops"
            )
            await eventually(lambda: run.progress and run.progress[-1].skipped, "skips counted")
        keys_a = sorted(r.event.key for r in topic_a.poll())
        keys_b = sorted(r.event.key for r in topic_b.poll())
    assert keys_a == ["a1", "a2", "a3"]
    assert keys_b == ["b1", "b2", "b3"]
    skipped = run.progress[-1].skipped_by_kind
    # drop of a; rename of b; dropDatabase dropping a and the new b (b_old is not listed), then
    # dropDatabase itself.
    assert skipped["drop"] == 3
    assert skipped["rename"] == 1
    assert skipped["dropDatabase"] == 1
    if strategy == "change_stream":
        assert skipped["invalidate"] == 1  # and the stream was reopened after it
    assert run.progress[-1].events == 6


# -- a change too large to publish ----------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_oversize_change_goes_to_dead_letters_and_capture_goes_on(
    mongo, kafka, unique, strategy
) -> None:
    db, prefix = f"ov_{unique}", f"t{unique}"
    spec = make_spec(mongo, db, f"ov-{unique}", ["orders"], capture=strategy)
    with MongoClient(mongo.mongo_uri) as client:
        start_at = oplog_now(client)
        orders = client[db].orders
        orders.insert_one({"_id": "before", "n": 1})
        orders.insert_one({"_id": "big", "blob": "x" * 1_100_000})  # fine for MongoDB (16 MB)
        orders.update_one({"_id": "big"}, {"$set": {"n": 2}})
        orders.insert_one({"_id": "after", "n": 3})
    capture = make_capture(kafka, spec, prefix, start_at)
    with (
        reader(kafka.kafka_bootstrap, spec.topic(prefix, "orders")) as data,
        reader(kafka.kafka_bootstrap, dead_letter_topic(prefix)) as dead,
    ):
        async with running(capture) as run:
            await eventually(
                lambda: len(data.poll()) >= 2 and len(dead.poll()) >= 2, "data and dead letters"
            )
        published = sorted(r.event.key for r in data.poll())
        letters = dead.poll()
    assert published == ["after", "before"]
    assert run.progress[-1].dead_letters == 2
    assert run.progress[-1].events == 4
    values = [orjson.loads(r.value) for r in letters]
    assert [v["op"] for v in sorted(values, key=lambda v: v["seq"])] == ["c", "u"]
    for record, value in zip(letters, values, strict=True):
        assert record.key == b"string:big"
        assert ("lakeward-dead-letter", b"oversize") in record.headers
        assert value["kind"] == "oversize"
        assert value["key"] == "string:big"
        assert value["document_key"] == '{"_id": "big"}'
        assert value["topic"] == spec.topic(prefix, "orders")
        assert value["size_bytes"] > value["limit_bytes"] == 1_000_000
        assert f"{value['size_bytes']} bytes exceeds max_message_bytes" in value["reason"]
        assert value["pipeline"] == spec.name and value["db"] == db
        assert len(record.value) < 2000


async def test_dead_letters_of_a_pipeline_reach_its_dead_letter_table_once(
    mongo, kafka, unique, tmp_path
) -> None:
    """Apply moves capture's dead letters into the pipeline's dead-letter table, exactly once,
    passing over those of other pipelines sharing the topic."""
    prefix = f"t{unique}"
    specs = [make_spec(mongo, f"dl{n}_{unique}", f"dl{n}-{unique}", ["orders"]) for n in (1, 2)]
    with MongoClient(mongo.mongo_uri) as client:
        start_at = oplog_now(client)
        for n, spec in enumerate(specs):
            client[spec.source.database].orders.insert_one({"_id": n, "blob": "x" * 1_100_000})
    for spec in specs:
        async with running(make_capture(kafka, spec, prefix, start_at)) as run:
            await eventually(lambda r=run: r.progress and r.progress[-1].dead_letters, "a letter")
    table = TxnTable(str(tmp_path / "dead_letters"), DEAD_LETTER_SCHEMA)
    reader_ = PartitionReader(kafka.kafka_bootstrap, dead_letter_topic(prefix))
    applier = DeadLetterApplier(specs[0].name, reader_, table)
    try:
        first = applier.apply_once(100, 0.5, 10)
        again = applier.apply_once(100, 0.5, 0.5)
    finally:
        reader_.close()
    assert (first.records, first.dead_letters) == (2, 1)  # the other pipeline's is passed over
    assert (again.records, again.dead_letters) == (0, 0)  # and neither is read again
    rows = table.ensure().to_pyarrow_table().to_pylist()
    assert len(rows) == 1
    assert rows[0]["pipeline"] == specs[0].name and rows[0]["reason"] == "oversize"
    assert "exceeds max_message_bytes" in rows[0]["error"]
    assert rows[0]["key"] == b"number:0"
    assert orjson.loads(rows[0]["value"])["db"] == specs[0].source.database


async def test_event_over_16_mb_is_a_clear_error(mongo, kafka, unique) -> None:
    """Pre- and post-images of a 9 MB document make a change event MongoDB cannot build."""
    db, prefix = f"big_{unique}", f"t{unique}"
    spec = make_spec(
        mongo, db, f"big-{unique}", ["orders"],
        full_document="required", pre_images=True, enable_pre_images=True,
    )  # fmt: skip
    capture = make_capture(kafka, spec, prefix, time.time() - 1)
    seen: list[Any] = []
    task = asyncio.create_task(capture.run(seen.append))
    try:
        await eventually(lambda: seen or task.done(), "capture reading")
        with MongoClient(mongo.mongo_uri) as client:
            client[db].orders.insert_one({"_id": 1, "blob": "x" * 9_000_000})
            client[db].orders.update_one({"_id": 1}, {"$set": {"n": 1}})
        with pytest.raises(CaptureSourceError, match="16 MB"):
            await asyncio.wait_for(task, 120)
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


# -- images ---------------------------------------------------------------------------------------


async def test_required_post_image_without_pre_images_is_a_clear_error(mongo, kafka, unique):
    db, prefix = f"pi_{unique}", f"t{unique}"
    spec = make_spec(mongo, db, f"pi-{unique}", ["orders"], full_document="required")
    with MongoClient(mongo.mongo_uri) as client:
        start_at = oplog_now(client)
        client[db].orders.insert_one({"_id": 1})
        client[db].orders.update_one({"_id": 1}, {"$set": {"n": 1}})
    with pytest.raises(CaptureSourceError, match="enable_pre_images: true"):
        await make_capture(kafka, spec, prefix, start_at).run(lambda progress: None)


@pytest.mark.parametrize(
    ("strategy", "options"),
    [("change_stream", {"full_document": "when_available"}), ("oplog", {"oplog_update": "diff"})],
)
async def test_missing_exact_image_falls_back_to_a_lookup(mongo, kafka, unique, strategy, options):
    db, prefix = f"fb_{unique}", f"t{unique}"
    spec = make_spec(mongo, db, f"fb-{unique}", ["orders"], capture=strategy, **options)
    with MongoClient(mongo.mongo_uri) as client:
        start_at = oplog_now(client)
        client[db].orders.insert_one({"_id": 1, "n": 0})  # no pre-images on this collection
        client[db].orders.update_one({"_id": 1}, {"$set": {"n": 1}})
    with reader(kafka.kafka_bootstrap, spec.topic(prefix, "orders")) as data:
        async with running(make_capture(kafka, spec, prefix, start_at)) as run:
            await eventually(lambda: len(data.poll()) >= 2, "both changes")
        events = sorted((r.event for r in data.poll()), key=lambda e: e.seq)
    assert events[1].op == "u" and events[1].after == {"_id": 1, "n": 1}
    assert run.progress[-1].lookup_fallbacks == 1


# -- multi-document transactions ------------------------------------------------------------------


async def test_large_transaction_lands_whole_in_order_and_equal_for_both_strategies(
    mongo, kafka, unique
) -> None:
    """A transaction over 16 MB is split over several oplog entries; it still lands whole, with
    one cluster time, positions 0..n-1 and its session identity, the same through both."""
    db, name = f"tx_{unique}", f"tx-{unique}"
    blob = "x" * 950_000  # each envelope stays under Kafka's 1 MB; 18 of them exceed 16 MB
    with MongoClient(mongo.mongo_uri) as client:
        start_at = oplog_now(client)
        orders = client[db].orders
        orders.insert_many([{"_id": f"pre{i}", "n": 0} for i in range(3)])
        with client.start_session() as session, session.start_transaction():
            lsid = session.session_id["id"]
            orders.update_one({"_id": "pre0"}, {"$set": {"n": 1}}, session=session)
            for i in range(18):
                orders.insert_one({"_id": f"big{i:02d}", "blob": blob}, session=session)
            orders.update_one({"_id": "pre1"}, {"$set": {"n": 1}}, session=session)
            orders.delete_one({"_id": "pre2"}, session=session)
        parts = client.local["oplog.rs"].count_documents({"ns": "admin.$cmd", "lsid.id": lsid})
    assert parts >= 2, "the transaction should span several oplog entries"
    published: dict[str, list[dict[str, Any]]] = {}
    for strategy in STRATEGIES:
        spec = make_spec(mongo, db, name, ["orders"], capture=strategy)
        prefix = f"t{unique}{strategy[:2]}"
        with reader(kafka.kafka_bootstrap, spec.topic(prefix, "orders")) as data:
            async with running(make_capture(kafka, spec, prefix, start_at)):
                records = await eventually(
                    lambda d=data: len(d.poll()) >= 24 and d.records, f"{strategy}: 24", 120
                )
        published[strategy] = sorted(map(comparable, records), key=lambda e: e["seq"])
    assert published["change_stream"] == published["oplog"]
    transaction = published["oplog"][3:]
    assert len(transaction) == 21
    assert len({e["seq"][:16] for e in transaction}) == 1
    assert [int(e["seq"][16:], 16) for e in transaction] == list(range(21))
    assert [e["op"] for e in transaction] == ["u", *["c"] * 18, "u", "d"]
    identities = {(e["source"]["lsid"], e["source"]["txnNumber"]) for e in transaction}
    assert len(identities) == 1 and None not in next(iter(identities))
