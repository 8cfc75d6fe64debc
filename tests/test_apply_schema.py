"""Apply writes typed columns: schema evolution, the three schema policies, bad input, a crash
right after a commit, and a hot-key workload (real Kafka, real Delta tables on local disk)."""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from bson import Int64, ObjectId
from confluent_kafka import Producer
from deltalake import DeltaTable
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from lakeward.apply import BatchApplier, app_id, documents
from lakeward.delta.table import (
    CURRENT_STATE_SCHEMA,
    DEAD_LETTER_SCHEMA,
    RESERVED_COLUMNS,
    TxnTable,
)
from lakeward.events import ChangeEvent, canonical_key, encode_envelope, make_seq
from lakeward.kafka.admin import ensure_topic
from lakeward.kafka.consumer import PartitionReader
from lakeward.schema_plan import plan_batch
from lakeward.typefactory import normalise
from tests.test_typefactory import assert_same_documents, comparable, envelope_keys
from tests.test_typefactory import documents as generated_documents
from workflows.spec import SchemaPolicy

PIPELINE = "p"


def _envelope(
    op: str, _id: Any, seq: int, doc: dict[str, Any] | None = None
) -> tuple[bytes, bytes]:
    key, key_type = canonical_key(_id)
    after = None if op == "d" else {"_id": _id, **(doc or {})}
    event = ChangeEvent(op=op, database="db", collection="c", key=key, key_type=key_type,
                        seq=make_seq(1_700_000_000, seq, 0), after=after,
                        document_key={"_id": _id})  # fmt: skip
    return event.kafka_key, encode_envelope(event, PIPELINE, 0)


def _publish(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for key, value in records:
        producer.produce(topic, key=key, value=value, partition=0)
    assert producer.flush(60) == 0


def _applier(
    bootstrap: str, topic: str, lake: Path, policy: SchemaPolicy = SchemaPolicy.permissive,
    max_record_bytes: int = 16 * 1024 * 1024,
) -> BatchApplier:  # fmt: skip
    return BatchApplier(
        PIPELINE,
        PartitionReader(bootstrap, topic),
        TxnTable(str(lake / "t"), CURRENT_STATE_SCHEMA),
        TxnTable(str(lake / "dead_letters"), DEAD_LETTER_SCHEMA),
        schema_policy=policy,
        max_record_bytes=max_record_bytes,
    )


def _drain(applier: BatchApplier, max_records: int = 1000) -> int:
    """Apply until a batch finds nothing new; returns the changes applied."""
    applied = 0
    while True:
        outcome = applier.apply_once(max_records, max_wait_s=0.5, idle_s=2)
        applied += outcome.applied
        if outcome.records == 0:
            return applied


def _lake(lake: Path) -> dict[Any, dict[str, Any] | None]:
    rows = DeltaTable(str(lake / "t")).to_pyarrow_table()
    return dict(zip(rows.column("_id").to_pylist(), documents(rows), strict=True))


def _dead_letters(lake: Path) -> list[dict[str, Any]]:
    if not (lake / "dead_letters" / "_delta_log").exists():
        return []
    return DeltaTable(str(lake / "dead_letters")).to_pyarrow_table().to_pylist()


@pytest.fixture
def topic(kafka, unique) -> str:
    name = f"schema-{unique}"
    ensure_topic(kafka.kafka_bootstrap, name, partitions=1)
    return name


# --- planning (pure) ----------------------------------------------------------------------------


def _table_schema(*docs: dict[str, Any]) -> pa.Schema:
    return plan_batch(None, list(docs), SchemaPolicy.strict, RESERVED_COLUMNS).schema


def test_the_source_id_field_gets_its_own_column_next_to_the_key() -> None:
    plan = plan_batch(None, [{"_id": 1, "_op": "x", "a": 1}], SchemaPolicy.strict, RESERVED_COLUMNS)
    assert plan.schema.names == ["_id%%1", "_op%%1", "a", "%nulls"]


def test_new_fields_and_nested_fields_are_added_and_ints_widen() -> None:
    existing = _table_schema({"_id": 1, "n": 1, "sub": {"x": 1}})
    plan = plan_batch(
        existing,
        [{"_id": 2, "n": Int64(2**40), "sub": {"x": 2, "y": "new"}, "tag": "t"}],
        SchemaPolicy.strict,
        RESERVED_COLUMNS,
    )
    assert not plan.rejected
    assert set(plan.added) == {"sub.y", "tag"}
    assert [(w.path, str(w.existing), str(w.widened)) for w in plan.widened] == [
        ("n", "int32", "int64")
    ]
    assert plan.schema.field("n").type == pa.int64()


@pytest.mark.parametrize("policy", list(SchemaPolicy))
def test_each_policy_on_a_conflicting_batch(policy: SchemaPolicy) -> None:
    existing = _table_schema({"_id": 1, "qty": 1, "name": "a"})
    docs = [
        {"_id": 2, "qty": "42", "name": "b"},  # converts exactly
        {"_id": 3, "qty": "forty", "name": "c"},  # cannot convert
        {"_id": 4, "qty": 7, "name": "d"},  # fits
        None,  # a delete
    ]
    plan = plan_batch(existing, docs, policy, RESERVED_COLUMNS)
    written = documents_of(plan)
    if policy is SchemaPolicy.strict:
        assert {i: r for i, (r, _) in plan.rejected.items()} == {
            0: "schema_conflict",
            1: "schema_conflict",
        }
        assert "qty: existing int32, incoming string" in plan.rejected[0][1]
        assert written == [{"_id": 4, "qty": 7, "name": "d"}, {}]
    elif policy is SchemaPolicy.coerce:
        assert {i: r for i, (r, _) in plan.rejected.items()} == {1: "schema_conflict"}
        assert written == [
            {"_id": 2, "qty": 42, "name": "b"},
            {"_id": 4, "qty": 7, "name": "d"},
            {},
        ]
    else:
        assert not plan.rejected
        assert "qty%json" in plan.schema.names and plan.kept_as_json == 2
        # Lossless: the conflicting values read back as the strings they were.
        assert written == [{"_id": 2, "qty": "42", "name": "b"},
                           {"_id": 3, "qty": "forty", "name": "c"},
                           {"_id": 4, "qty": 7, "name": "d"}, {}]  # fmt: skip
        assert plan.columns.column("qty").to_pylist() == [None, None, 7, None]


def documents_of(plan) -> list[dict[str, Any]]:
    from lakeward.typefactory import from_arrow

    return from_arrow(plan.columns)


# --- through Kafka into Delta -------------------------------------------------------------------


# Each example runs Kafka and Delta: a few, and no shrinking (it would take minutes).
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(
    st.lists(
        st.lists(
            generated_documents(envelope_keys.filter(lambda k: k != "_id")), min_size=1, max_size=5
        ),
        min_size=1,
        max_size=3,
    )
)
@example(batches=[[{"%%1": False}], [{"a": {"a": None}, "%%1": 0}]])  # %json of an escaped key
@example(batches=[[{"a`b": 1, "c": {"d`": "x"}}]])  # a backtick once broke delta-rs's MERGE filter
@example(batches=[[{"n": -15503}], [{}], [{"n": Int64(-8022)}]])  # a widening across batches
def test_generated_documents_come_back_equal_through_kafka_and_delta(
    kafka_bootstrap: str, tmp_path_factory, batches: list[list[dict[str, Any]]]
) -> None:
    """Source document -> envelope -> Kafka -> apply (schema evolving batch by batch, conflicts
    kept losslessly by the permissive policy) -> Delta -> documents: equal after normalising."""
    topic = f"prop-{ObjectId()}"
    ensure_topic(kafka_bootstrap, topic, partitions=1)
    lake = tmp_path_factory.mktemp("lake")
    applier = _applier(kafka_bootstrap, topic, lake)
    expected: dict[str, dict[str, Any]] = {}
    seq = 0
    for batch in batches:
        records = []
        for doc in batch:
            seq += 1
            _id = seq % 4  # some keys are changed again by later batches
            records.append(_envelope("c", _id, seq, doc))
            expected[str(_id)] = {"_id": _id, **doc}
        _publish(kafka_bootstrap, topic, records)
        _drain(applier)
    lake_docs = _lake(lake)
    assert sorted(lake_docs) == sorted(expected)
    assert _dead_letters(lake) == []
    actual = [lake_docs[k] for k in sorted(expected)]
    wanted = [normalise(expected[k]) for k in sorted(expected)]
    history = DeltaTable(str(lake / "t")).history()
    if any(json.loads(h["lakeward.schema"])["widened"] for h in history if "lakeward.schema" in h):
        # A later batch widened a numeric column (int32 -> int64 -> double): documented, the
        # column's earlier values read back in the wider type, with the same value.
        assert [_by_value(comparable(d)) for d in actual] == [
            _by_value(comparable(d)) for d in wanted
        ]
    else:
        assert_same_documents(actual, wanted)


def _by_value(value: Any) -> Any:
    """A `comparable` form in which integers equal the same value in any wider numeric type."""
    if isinstance(value, tuple) and value and value[0] in ("int32", "int64"):
        number = value[1]
        return ("double", struct.pack(">d", float(number))) if float(number) == number else value
    if isinstance(value, tuple | list):
        return type(value)(_by_value(v) for v in value)
    return value


@pytest.fixture(scope="module")
def kafka_bootstrap(kafka) -> str:
    return kafka.kafka_bootstrap


def test_a_schema_change_is_committed_with_its_description_and_widening_keeps_values(
    kafka, topic, tmp_path
) -> None:
    bootstrap = kafka.kafka_bootstrap
    applier = _applier(bootstrap, topic, tmp_path)
    _publish(bootstrap, topic, [_envelope("c", i, i, {"n": i}) for i in range(1, 4)])
    _drain(applier)
    assert DeltaTable(str(tmp_path / "t")).schema().to_arrow().field("n").type == pa.int32()

    _publish(bootstrap, topic, [_envelope("c", 9, 9, {"n": Int64(2**40), "sub": {"a": 1.5}})])
    outcome = applier.apply_once(100, max_wait_s=0.5, idle_s=5)
    assert outcome.schema_changes == 1 and outcome.applied == 1

    table = DeltaTable(str(tmp_path / "t"))
    assert pa.schema(table.schema().to_arrow()).field("n").type == pa.int64()
    described = [
        json.loads(h["lakeward.schema"]) for h in table.history() if "lakeward.schema" in h
    ]
    assert described and described[0]["widened"] == ["n: int32 -> int64"]
    assert "sub" in described[0]["added"]
    # Rows written before the rewrite keep their values (now int64) and their txn version.
    assert _lake(tmp_path) == {
        "1": {"_id": 1, "n": Int64(1)}, "2": {"_id": 2, "n": Int64(2)},
        "3": {"_id": 3, "n": Int64(3)}, "9": {"_id": 9, "n": Int64(2**40), "sub": {"a": 1.5}},
    }  # fmt: skip
    assert table.transaction_version(app_id(PIPELINE, topic, 0)) == 3


@pytest.mark.parametrize("policy", list(SchemaPolicy))
def test_each_policy_on_a_real_table(kafka, topic, tmp_path, policy: SchemaPolicy) -> None:
    bootstrap = kafka.kafka_bootstrap
    applier = _applier(bootstrap, topic, tmp_path, policy)
    _publish(bootstrap, topic, [_envelope("c", 1, 1, {"qty": 1}), _envelope("c", 2, 2, {"qty": 2})])
    _drain(applier)
    _publish(bootstrap, topic, [
        _envelope("u", 1, 3, {"qty": "10"}), _envelope("u", 2, 4, {"qty": "ten"}),
        _envelope("c", 3, 5, {"qty": 3}),
    ])  # fmt: skip
    outcome = applier.apply_once(100, max_wait_s=0.5, idle_s=5)
    lake = _lake(tmp_path)
    dead = _dead_letters(tmp_path)
    assert lake["3"] == {"_id": 3, "qty": 3}  # the batch goes on
    if policy is SchemaPolicy.strict:
        assert outcome.dead_letter_reasons == {"schema_conflict": 2}
        assert lake["1"] == {"_id": 1, "qty": 1} and lake["2"] == {"_id": 2, "qty": 2}
        assert sorted(d["kafka_offset"] for d in dead) == [2, 3]
    elif policy is SchemaPolicy.coerce:
        assert outcome.dead_letter_reasons == {"schema_conflict": 1} and outcome.coerced == 1
        assert lake["1"] == {"_id": 1, "qty": 10} and lake["2"] == {"_id": 2, "qty": 2}
        assert [d["kafka_offset"] for d in dead] == [3]
        assert "without loss" in dead[0]["error"]
    else:
        assert outcome.dead_letter_reasons == {} and outcome.kept_as_json == 2
        assert lake["1"] == {"_id": 1, "qty": "10"} and lake["2"] == {"_id": 2, "qty": "ten"}
        rows = DeltaTable(str(tmp_path / "t")).to_pyarrow_table(columns=["_id", "qty", "qty%json"])
        assert sorted(rows.to_pylist(), key=lambda r: r["_id"])[0] == {
            "_id": "1", "qty": None, "qty%json": '{"v": "10"}'
        }  # fmt: skip
        assert dead == []


def test_bad_input_is_dead_lettered_with_its_reason_and_the_batch_goes_on(
    kafka, topic, tmp_path
) -> None:
    bootstrap = kafka.kafka_bootstrap
    good_key, good = _envelope("c", 1, 1, {"v": "ok"})
    newer = json.loads(_envelope("c", 2, 2)[1])
    newer["format"] = 99
    unknown_op = json.loads(_envelope("c", 3, 3)[1])
    unknown_op["op"] = "x"
    missing_op = json.loads(_envelope("c", 4, 4)[1])
    del missing_op["op"]
    no_id = json.loads(_envelope("c", 5, 5)[1])
    no_id["after"] = '{"v": 1}'
    no_id["document_key"] = None
    _, oversize = _envelope("c", 6, 6, {"blob": "x" * 5000})
    _publish(bootstrap, topic, [
        (b"k", b"\xff not json"), (b"k", json.dumps(newer).encode()),
        (b"k", json.dumps(unknown_op).encode()), (b"k", json.dumps(missing_op).encode()),
        (b"k", json.dumps(no_id).encode()), (b"k", oversize), (good_key, good),
    ])  # fmt: skip
    outcome = _applier(bootstrap, topic, tmp_path, max_record_bytes=4000).apply_once(
        100, max_wait_s=0.5, idle_s=5
    )
    assert outcome.dead_letter_reasons == {
        "not_json": 1, "newer_format": 1, "unknown_op": 2, "missing_id": 1, "oversize": 1,
    }  # fmt: skip
    assert _lake(tmp_path) == {"1": {"_id": 1, "v": "ok"}}
    dead = {d["kafka_offset"]: d for d in _dead_letters(tmp_path)}
    assert dead[0]["value"] == b"\xff not json"  # the original bytes, for a replay after a fix
    assert "upgrade the workers" in dead[1]["error"]
    assert dead[5]["reason"] == "oversize" and "4000" in dead[5]["error"]


_CRASH_AFTER_COMMIT = """
import os, sys
from lakeward.delta import table as delta_table
from tests.test_apply_schema import _applier
from pathlib import Path

original = delta_table.TxnTable.merge_current_state

def merge_then_die(self, *args, **kwargs):
    original(self, *args, **kwargs)
    os._exit(17)  # the process dies right after the Delta commit, before anything else

delta_table.TxnTable.merge_current_state = merge_then_die
_applier(sys.argv[1], sys.argv[2], Path(sys.argv[3])).apply_once(1000, 0.5, 10)
"""


def test_a_crash_right_after_the_delta_commit_loses_and_doubles_nothing(
    kafka, topic, tmp_path
) -> None:
    bootstrap = kafka.kafka_bootstrap
    _publish(bootstrap, topic, [_envelope("c", i, i, {"n": i}) for i in range(50)])
    crashed = subprocess.run(
        [sys.executable, "-c", _CRASH_AFTER_COMMIT, bootstrap, topic, str(tmp_path)],
        cwd=Path(__file__).parent.parent, env={**os.environ}, capture_output=True, timeout=120,
    )  # fmt: skip
    assert crashed.returncode == 17, crashed.stderr.decode()[-2000:]
    table = DeltaTable(str(tmp_path / "t"))
    assert table.count() == 50 and table.transaction_version(app_id(PIPELINE, topic, 0)) == 49
    version = table.version()

    # The retry (a fresh worker) reads the txn version, skips the batch and goes on.
    _publish(bootstrap, topic, [_envelope("u", 0, 100, {"n": "changed"})])
    retry = _applier(bootstrap, topic, tmp_path)
    outcome = retry.apply_once(1000, 0.5, 10)
    assert outcome.applied == 1 and outcome.skipped_already_applied == 0
    assert DeltaTable(str(tmp_path / "t")).version() > version
    lake = _lake(tmp_path)
    assert len(lake) == 50 and lake["0"] == {"_id": 0, "n": "changed"}
    assert lake["49"] == {"_id": 49, "n": 49}


def test_a_hot_key_workload_of_100k_changes_ends_equal_to_the_source(
    kafka, topic, tmp_path
) -> None:
    """100k inserts, updates and deletes, most of them on 20 hot keys, in seq order."""
    rng = random.Random(7)
    source: dict[int, dict[str, Any]] = {}
    records = []
    for seq in range(1, 100_001):
        _id = rng.randrange(20) if rng.random() < 0.9 else rng.randrange(20, 5000)
        if _id in source and rng.random() < 0.15:
            del source[_id]
            records.append(_envelope("d", _id, seq))
        else:
            doc = {"n": seq, "hot": _id < 20, "tags": ["a"] * (seq % 3)}
            records.append(_envelope("u" if _id in source else "c", _id, seq, doc))
            source[_id] = {"_id": _id, **doc}
    _publish(kafka.kafka_bootstrap, topic, records)
    applied = _drain(_applier(kafka.kafka_bootstrap, topic, tmp_path), max_records=20_000)
    assert applied == 100_000
    assert _lake(tmp_path) == {str(k): normalise(v) for k, v in source.items()}


def test_the_change_log_keeps_every_change_once_with_before_images(kafka, topic, tmp_path) -> None:
    from lakeward.apply import CHANGE_LOG_SCHEMA

    bootstrap = kafka.kafka_bootstrap

    def applier() -> BatchApplier:
        return BatchApplier(
            PIPELINE,
            PartitionReader(bootstrap, topic),
            TxnTable(str(tmp_path / "t"), CURRENT_STATE_SCHEMA),
            TxnTable(str(tmp_path / "dead_letters"), DEAD_LETTER_SCHEMA),
            change_log=TxnTable(str(tmp_path / "log"), CHANGE_LOG_SCHEMA),
            change_log_before=True,
        )

    key, created = _envelope("c", 1, 1, {"v": 1})
    update = json.loads(_envelope("u", 1, 2, {"v": "two"})[1])
    update["before"] = '{"_id": 1, "v": 1}'
    _publish(bootstrap, topic, [(key, created), (key, json.dumps(update).encode()),
                                _envelope("d", 1, 3)])  # fmt: skip
    assert applier().apply_once(100, 0.5, 5).applied == 3
    assert applier().apply_once(100, 0.5, 1).records == 0  # a replay appends nothing

    log = DeltaTable(str(tmp_path / "log")).to_pyarrow_table().sort_by("_seq")
    assert log.column("_op").to_pylist() == ["c", "u", "d"]
    assert documents(log) == [{"_id": 1, "v": 1}, {"_id": 1, "v": "two"}, None]
    assert json.loads(log.column("_before").to_pylist()[1]) == {
        "_id": {"$numberInt": "1"},
        "v": {"$numberInt": "1"},
    }  # canonical Extended JSON of the pre-image
    # 1 and "two" in one batch: a variant column keeps both types.
    assert [f.name for f in log.schema.field("v").type] == ["%int32", "%string"]
    assert _lake(tmp_path) == {}  # the current state applied the delete


def test_the_outcome_reports_the_backlog_left_in_the_topic(kafka, topic, tmp_path) -> None:
    _publish(kafka.kafka_bootstrap, topic, [_envelope("c", i, i + 1) for i in range(50)])
    applier = _applier(kafka.kafka_bootstrap, topic, tmp_path)
    assert applier.apply_once(10, max_wait_s=2, idle_s=5).backlog == 40
    assert applier.apply_once(100, max_wait_s=0.5, idle_s=5).backlog == 0


def test_lakeward_query_reads_typed_columns_and_the_change_log(kafka, topic, tmp_path) -> None:
    from lakeward.apply import CHANGE_LOG_SCHEMA
    from lakeward.query import query

    bootstrap = kafka.kafka_bootstrap
    applier = BatchApplier(
        PIPELINE,
        PartitionReader(bootstrap, topic),
        TxnTable(str(tmp_path / "shop" / "orders"), CURRENT_STATE_SCHEMA),
        TxnTable(str(tmp_path / "_lakeward" / "dead_letters"), DEAD_LETTER_SCHEMA),
        change_log=TxnTable(str(tmp_path / "shop" / "orders__changes"), CHANGE_LOG_SCHEMA),
    )
    _publish(bootstrap, topic, [
        _envelope("c", 1, 1, {"status": "new", "customer": {"name": "Ada"}, "lines": [1, 2]}),
        _envelope("c", 2, 2, {"status": "new", "customer": {"name": "Bo"}, "lines": []}),
        _envelope("u", 1, 3, {"status": "paid", "customer": {"name": "Ada"}, "lines": [1, 2]}),
        _envelope("d", 2, 4),
    ])  # fmt: skip
    _drain(applier)
    rows = query(
        "SELECT _id, status, customer.name AS name, len(lines) AS n FROM shop.orders", lake=tmp_path
    )
    assert rows.to_pylist() == [{"_id": "1", "status": "paid", "name": "Ada", "n": 2}]
    changes = query(
        "SELECT _op, count(*) AS n FROM shop.orders__changes GROUP BY _op ORDER BY _op",
        lake=tmp_path,
    )
    assert changes.to_pylist() == [{"_op": "c", "n": 2}, {"_op": "d", "n": 1}, {"_op": "u", "n": 1}]


def test_a_widening_past_the_rewrite_limit_is_refused_clearly_and_loses_nothing(
    kafka, topic, tmp_path
) -> None:
    from lakeward.delta.table import SchemaRewriteRefused

    bootstrap = kafka.kafka_bootstrap
    applier = _applier(bootstrap, topic, tmp_path)
    applier.table.rewrite_row_limit = 2  # the real limit is 100 000 rows (see TxnTable.rewrite)
    _publish(bootstrap, topic, [_envelope("c", i, i, {"n": i}) for i in range(1, 4)])
    _drain(applier)
    _publish(bootstrap, topic, [_envelope("c", 9, 9, {"n": Int64(2**40)})])
    with pytest.raises(SchemaRewriteRefused, match="rewrite of its 3 rows"):
        applier.apply_once(100, max_wait_s=0.5, idle_s=5)
    table = DeltaTable(str(tmp_path / "t"))
    assert pa.schema(table.schema().to_arrow()).field("n").type == pa.int32()  # untouched
    assert table.transaction_version(app_id(PIPELINE, topic, 0)) == 2  # the change is not lost:
    applier.table.rewrite_row_limit = 100_000  # once allowed, the same offset applies
    assert applier.apply_once(100, max_wait_s=0.5, idle_s=5).applied == 1
    assert _lake(tmp_path)["9"] == {"_id": 9, "n": Int64(2**40)}
