"""Apply is exactly once: the Delta log's txn versions decide what is applied (real servers)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from confluent_kafka import Producer
from deltalake import DeltaTable

from lakeward.apply import BatchApplier, ConcurrentCommitError, app_id, documents
from lakeward.delta.table import CURRENT_STATE_SCHEMA, DEAD_LETTER_SCHEMA, TxnTable
from lakeward.events import ChangeEvent, canonical_key, encode_envelope, make_seq
from lakeward.kafka.admin import ensure_topic
from lakeward.kafka.consumer import PartitionReader

PIPELINE = "p"


def _event(op: str, _id: object, seq: int, **fields: object) -> bytes:
    key, key_type = canonical_key(_id)
    after = None if op == "d" else {"_id": _id, **fields}
    event = ChangeEvent(op=op, database="db", collection="c", key=key, key_type=key_type,
                        seq=make_seq(1_700_000_000, seq, 0), after=after,
                        document_key={"_id": _id})  # fmt: skip
    return encode_envelope(event, PIPELINE, 0)


def _publish(bootstrap: str, topic: str, values: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for key, value in values:
        producer.produce(topic, key=key, value=value, partition=0)
    assert producer.flush(30) == 0


def _rows(uri: str) -> dict[str, dict | None]:
    table = DeltaTable(uri).to_pyarrow_table()
    return dict(zip(table.column("_id").to_pylist(), documents(table), strict=True))


@pytest.fixture
def topic(kafka, unique) -> str:
    name = f"apply-{unique}"
    ensure_topic(kafka.kafka_bootstrap, name, partitions=1)
    return name


def _applier(kafka, topic: str, lake: Path) -> BatchApplier:
    return BatchApplier(
        PIPELINE,
        PartitionReader(kafka.kafka_bootstrap, topic),
        TxnTable(str(lake / "t"), CURRENT_STATE_SCHEMA),
        TxnTable(str(lake / "dead_letters"), DEAD_LETTER_SCHEMA),
    )


def test_replayed_batch_changes_nothing(kafka, topic, tmp_path) -> None:
    _publish(kafka.kafka_bootstrap, topic, [
        (b"number:1", _event("c", 1, 1, v="a")),
        (b"number:2", _event("c", 2, 2, v="b")),
        (b"number:1", _event("u", 1, 3, v="a2")),
        (b"number:2", _event("d", 2, 4)),
    ])  # fmt: skip
    first = _applier(kafka, topic, tmp_path)
    outcome = first.apply_once(max_records=100, max_wait_s=1, idle_s=10)
    assert outcome.applied == 4
    version = DeltaTable(str(tmp_path / "t")).version()
    assert _rows(str(tmp_path / "t")) == {"1": {"_id": 1, "v": "a2"}}

    # A fresh consumer (a retried attempt on another worker) starts from the Delta txn version.
    replay = _applier(kafka, topic, tmp_path).apply_once(max_records=100, max_wait_s=1, idle_s=0.5)
    assert replay.records == 0 and replay.applied == 0
    assert DeltaTable(str(tmp_path / "t")).version() == version
    assert DeltaTable(str(tmp_path / "t")).transaction_version(app_id(PIPELINE, topic, 0)) == 3


def test_two_racing_attempts_apply_the_batch_once(kafka, topic, tmp_path) -> None:
    _publish(kafka.kafka_bootstrap, topic,
             [(f"number:{i}".encode(), _event("c", i, i, n=i)) for i in range(200)])  # fmt: skip
    attempts = [_applier(kafka, topic, tmp_path) for _ in range(2)]
    attempts[0].table.ensure()  # both race on an existing table, as two retries would
    barrier = threading.Barrier(2)
    outcomes: list[object] = [None, None]

    def attempt(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = attempts[i].apply_once(max_records=500, max_wait_s=1, idle_s=10)
        except ConcurrentCommitError as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)

    table = DeltaTable(str(tmp_path / "t"))
    committed = [h for h in table.history() if h["operation"] == "MERGE"]
    applied = [o for o in outcomes if not isinstance(o, ConcurrentCommitError) and o.applied]
    # Either the loser was refused, or it re-read the versions and found nothing left to apply.
    assert len(committed) == len(applied) == 1, outcomes
    assert table.count() == 200
    assert _rows(str(tmp_path / "t"))["199"] == {"_id": 199, "n": 199}

    # The loser's retry finds everything applied.
    retry = _applier(kafka, topic, tmp_path).apply_once(max_records=500, max_wait_s=1, idle_s=0.5)
    assert retry.applied == 0


def test_older_change_never_overwrites_a_newer_one(kafka, topic, tmp_path) -> None:
    _publish(kafka.kafka_bootstrap, topic, [(b"number:1", _event("u", 1, 9, v="new"))])
    applier = _applier(kafka, topic, tmp_path)
    applier.apply_once(max_records=100, max_wait_s=1, idle_s=10)
    # A stale change arrives later in Kafka (a replay or an overlapping snapshot row).
    _publish(kafka.kafka_bootstrap, topic, [(b"number:1", _event("u", 1, 5, v="old"))])
    outcome = applier.apply_once(max_records=100, max_wait_s=1, idle_s=10)
    assert outcome.records == 1
    assert _rows(str(tmp_path / "t")) == {"1": {"_id": 1, "v": "new"}}


def test_malformed_record_is_dead_lettered_and_the_batch_goes_on(kafka, topic, tmp_path) -> None:
    _publish(kafka.kafka_bootstrap, topic, [
        (b"number:1", _event("c", 1, 1, v="ok")),
        (b"junk", b"{not json"),
        (b"number:2", _event("c", 2, 2, v="ok too")),
    ])  # fmt: skip
    outcome = _applier(kafka, topic, tmp_path).apply_once(max_records=100, max_wait_s=1, idle_s=10)
    assert (outcome.applied, outcome.dead_letters) == (2, 1)
    assert set(_rows(str(tmp_path / "t"))) == {"1", "2"}
    dead = DeltaTable(str(tmp_path / "dead_letters")).to_pyarrow_table().to_pylist()
    assert len(dead) == 1
    assert dead[0]["reason"] == "not_json"
    assert dead[0]["value"] == b"{not json"  # the original bytes, for replay after a fix
    assert (dead[0]["kafka_topic"], dead[0]["kafka_offset"]) == (topic, 1)

    # Replaying the same batch writes the dead letter once, not twice.
    again = _applier(kafka, topic, tmp_path)
    again.table._table = None
    assert again.apply_once(max_records=100, max_wait_s=1, idle_s=0.5).dead_letters == 0
    assert DeltaTable(str(tmp_path / "dead_letters")).count() == 1


def test_a_delete_is_not_undone_by_an_older_snapshot_row(kafka, topic, tmp_path) -> None:
    _publish(kafka.kafka_bootstrap, topic, [(b"number:1", _event("c", 1, 1, v="live"))])
    applier = _applier(kafka, topic, tmp_path)
    applier.apply_once(max_records=100, max_wait_s=1, idle_s=10, keep_tombstones=True)
    # The document is deleted at seq 5; a snapshot row read earlier (seq 3) arrives after it.
    _publish(kafka.kafka_bootstrap, topic, [(b"number:1", _event("d", 1, 5))])
    applier.apply_once(max_records=100, max_wait_s=1, idle_s=10, keep_tombstones=True)
    _publish(kafka.kafka_bootstrap, topic, [(b"number:1", _event("r", 1, 3, v="stale"))])
    applier.apply_once(max_records=100, max_wait_s=1, idle_s=10, keep_tombstones=True)
    rows = DeltaTable(str(tmp_path / "t")).to_pyarrow_table()
    assert rows.select(["_id", "_op"]).to_pylist() == [{"_id": "1", "_op": "d"}]
    assert documents(rows) == [None]  # a tombstone, not "stale"
    assert rows.column("v").to_pylist() == [None]

    purged = applier.apply_once(
        max_records=100, max_wait_s=1, idle_s=0.2, keep_tombstones=False, purge_tombstones=True
    )
    assert purged.tombstones_purged == 1
    assert DeltaTable(str(tmp_path / "t")).count() == 0


def test_on_equal_seqs_the_later_record_of_a_partition_wins(kafka, topic, tmp_path) -> None:
    """Another producer's Debezium topic without transaction metadata can repeat a seq."""
    applier = _applier(kafka, topic, tmp_path)
    _publish(kafka.kafka_bootstrap, topic, [
        (b"number:1", _event("c", 1, 7, v="first")),
        (b"number:1", _event("u", 1, 7, v="second")),
    ])  # fmt: skip
    applier.apply_once(max_records=100, max_wait_s=1, idle_s=10)
    assert _rows(str(tmp_path / "t")) == {"1": {"_id": 1, "v": "second"}}
    # Across batches too: the MERGE breaks the tie by Kafka offset within the partition.
    _publish(kafka.kafka_bootstrap, topic, [(b"number:1", _event("u", 1, 7, v="third"))])
    applier.apply_once(max_records=100, max_wait_s=1, idle_s=10)
    assert _rows(str(tmp_path / "t")) == {"1": {"_id": 1, "v": "third"}}
