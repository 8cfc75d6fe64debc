"""The workload generator: reproducible, the requested mix, awkward BSON, drift, and real writes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bson
import pytest
from bson.binary import Binary
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.datetime_ms import DatetimeMS
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from bson.max_key import MaxKey
from bson.min_key import MinKey
from bson.objectid import ObjectId
from bson.raw_bson import RawBSONDocument
from bson.regex import Regex
from bson.timestamp import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st
from pymongo import MongoClient
from typer.testing import CliRunner

from lakeward.cli import app
from lakeward.generate import (
    Batch,
    Generator,
    IdType,
    Operation,
    OpKind,
    OpMix,
    Pacer,
    pacing_batch_size,
    parse_ops,
    parse_rate,
    run,
)

ALL_KINDS = "insert:50,update:30,replace:10,delete:10"


def _fingerprint(op: Operation) -> bytes:
    """Byte-exact identity of an operation (bytes, because NaN != NaN in Python)."""
    return bson.encode({"k": op.kind.value, "id": op.id, "d": op.document, "u": op.update})


def _batch_fingerprints(batches: Iterator[Batch]) -> list[tuple[bool, bool, list[bytes]]]:
    return [(b.initial, b.transactional, [_fingerprint(o) for o in b.operations]) for b in batches]


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)


def _flat(text: str) -> str:
    """CLI output without rich's panel borders and line wrapping."""
    return " ".join(text.replace("│", " ").replace("╭", " ").replace("╰", " ").split())


# ---- pure: reproducibility, mix, types, drift ---------------------------------------------------


def test_same_seed_gives_identical_operations() -> None:
    def sequence() -> list[tuple[bool, bool, list[bytes]]]:
        gen = Generator(7, mix=ALL_KINDS, id_type="mixed", drift=True, drift_every=300)
        return _batch_fingerprints(gen.batches(2000, initial=300, batch_size=64, transactions=0.3))

    first, second = sequence(), sequence()
    assert first == second
    assert any(tx for _, tx, _ in first), "some batches should be transactional"


def test_different_seed_gives_different_operations() -> None:
    a = [_fingerprint(op) for op in Generator(1, mix=ALL_KINDS).operations(200)]
    b = [_fingerprint(op) for op in Generator(2, mix=ALL_KINDS).operations(200)]
    assert a != b
    assert len(set(a) & set(b)) == 0


def test_operation_sequence_does_not_depend_on_batching_or_transactions() -> None:
    def ops(batch_size: int, transactions: float) -> list[bytes]:
        gen = Generator(5, mix=ALL_KINDS)
        batches = gen.batches(1000, initial=50, batch_size=batch_size, transactions=transactions)
        return [_fingerprint(op) for b in batches for op in b.operations]

    assert ops(500, 0.0) == ops(7, 0.5)


def test_operation_mix_over_10k_operations_is_close_to_the_request() -> None:
    gen = Generator(11, mix=ALL_KINDS)
    list(gen.initial(1000))  # known ids exist, so no update/delete falls back to an insert
    counts = Counter(op.kind for op in gen.operations(10_000))
    for kind, percent in parse_ops(ALL_KINDS).weights().items():
        assert abs(counts[kind] / 100 - percent) < 2.0, (kind, counts)


def test_objectids_are_deterministic_unique_and_clock_free() -> None:
    ids = [op.id for op in Generator(3).initial(5000)]
    assert ids == [op.id for op in Generator(3).initial(5000)]
    assert len(set(ids)) == len(ids)
    assert all(isinstance(i, ObjectId) for i in ids)
    assert not set(ids) & {op.id for op in Generator(4).initial(5000)}
    assert ids[0].generation_time.year == 2024


@pytest.mark.parametrize(
    ("id_type", "expected"),
    [
        (IdType.OBJECTID, {ObjectId}),
        (IdType.INT, {int}),
        (IdType.STRING, {str}),
        (IdType.UUID, {Binary}),
        (IdType.MIXED, {ObjectId, int, str, Binary}),
    ],
)
def test_id_types(id_type: IdType, expected: set[type]) -> None:
    ids = [op.id for op in Generator(1, id_type=id_type).initial(400)]
    assert {type(i) for i in ids} == expected
    assert len(set(ids)) == len(ids)
    assert all(i.subtype == 4 for i in ids if isinstance(i, Binary))


def test_documents_contain_the_awkward_bson_types() -> None:
    gen = Generator(42, extreme_dates=True)
    docs = [op.document for op in gen.initial(3000)]
    seen: dict[str, bool] = Counter()  # type: ignore[assignment]
    for doc in docs:
        for v in _walk(doc):
            checks = {
                "decimal128 34 digits": isinstance(v, Decimal128)
                and len(v.to_decimal().as_tuple().digits) == 34,
                "date before 1970": isinstance(v, datetime) and v.year < 1970,
                "date in 2300": isinstance(v, datetime) and v.year == 2300,
                "date outside python": isinstance(v, DatetimeMS),
                "uuid": isinstance(v, Binary) and v.subtype == 4,
                "binary": isinstance(v, Binary) and v.subtype == 0,
                "int64 max": isinstance(v, Int64) and v == 2**63 - 1,
                "int64 min": isinstance(v, Int64) and v == -(2**63),
                "int32": type(v) is int and -(2**31) <= v < 2**31,
                "double": type(v) is float and math.isfinite(v),
                "nan": type(v) is float and math.isnan(v),
                "inf": type(v) is float and math.isinf(v),
                "bool": isinstance(v, bool),
                "null": v is None,
                "objectid": isinstance(v, ObjectId),
                "regex": isinstance(v, Regex),
                "timestamp": isinstance(v, Timestamp),
                "minkey": isinstance(v, MinKey),
                "maxkey": isinstance(v, MaxKey),
                "empty document": v == {},
                "empty array": v == [],
                "mixed-type array": isinstance(v, list)
                and len({type(x) for x in v}) > 2,
                "nested document": isinstance(v, dict)
                and any(isinstance(x, dict) and x for x in v.values()),
            }  # fmt: skip
            for name, hit in checks.items():
                seen[name] += hit
    missing = [name for name, count in seen.items() if not count]
    assert not missing, f"never generated: {missing}"
    assert all(isinstance(d["items"], list) for d in docs)
    assert all({"sku", "qty", "price"} <= item.keys() for d in docs for item in d["items"])
    assert all(isinstance(bson.encode(d), bytes) for d in docs)


def test_drift_adds_fields_deepens_nesting_and_changes_types() -> None:
    gen = Generator(9, mix="insert:100", drift=True, drift_every=500)
    # Operation i is written at stage i // drift_every.
    docs = [(i // 500, op.document) for i, op in enumerate(gen.operations(2600))]
    first = [d for stage, d in docs if stage == 0]
    last = [d for stage, d in docs if stage == 4]
    assert first and last and gen.drift_stage == 4

    def prices(ds: list[dict[str, Any]]) -> set[type]:
        return {type(i["price"]) for d in ds for i in d["items"]}

    def qtys(ds: list[dict[str, Any]]) -> set[type]:
        return {type(i["qty"]) for d in ds for i in d["items"]}

    assert prices(first) == {float} and prices(last) == {str}
    assert qtys(first) == {int} and qtys(last) == {Decimal128}
    assert {type(d["status"]) for d in first} == {str}
    assert {type(d["status"]) for d in last} == {dict}
    assert not any("loyalty" in d for d in first) and all("loyalty" in d for d in last)
    assert all("geo" in d["customer"]["address"] for d in first)
    assert all("os" in d["metadata"]["source"]["device"] for d in last)
    assert all("location" in d["customer"]["address"] for d in last)


def test_without_drift_the_shape_stays_put() -> None:
    gen = Generator(9, mix="insert:100", drift=False, drift_every=10)
    docs = [op.document for op in gen.operations(500)]
    assert gen.drift_stage == 0
    assert {type(i["price"]) for d in docs for i in d["items"]} == {float}


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    weights=st.lists(st.integers(0, 10), min_size=4, max_size=4).filter(lambda w: sum(w) > 0),
    pool_size=st.sampled_from([1, 5, 1000]),
)
def test_updates_and_deletes_only_target_live_ids(
    seed: int, weights: list[int], pool_size: int
) -> None:
    scaled = [w * 100 // sum(weights) for w in weights]
    scaled[0] += 100 - sum(scaled)
    mix = OpMix(*scaled)
    live: set[Any] = set()
    gen = Generator(seed, mix=mix, id_type="mixed", pool_size=pool_size)
    for op in gen.operations(300):
        if op.kind is OpKind.INSERT:
            assert op.id not in live
            live.add(op.id)
        else:
            assert op.id in live, op
            if op.kind is OpKind.DELETE:
                live.remove(op.id)
        assert gen.known_ids <= pool_size


# ---- pure: options and pacing ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("insert:70,foo:30", "unknown operation 'foo'"),
        ("insert:70,update:20", "sum to 90, not 100"),
        ("insert:seventy,update:30", "not a whole number"),
        ("insert", "not kind:percent"),
        ("insert:50,insert:50", "given twice"),
        ("", "no operations given"),
    ],
)
def test_bad_op_mix_is_explained(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_ops(text)


def test_op_mix_parses() -> None:
    assert parse_ops("insert:70, update:25 ,delete:5") == OpMix(70, 25, 0, 5)
    assert str(parse_ops("replace:100")) == "replace:100"


@pytest.mark.parametrize(
    ("text", "rate"),
    [("5000/s", 5000.0), ("5000", 5000.0), ("300/min", 5.0), ("7200/h", 2.0), ("unlimited", None)],
)
def test_rate_parses(text: str, rate: float | None) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["abc", "-5/s", "0/s", "5/fortnight", "5000/s/s"])
def test_bad_rate_is_explained(text: str) -> None:
    with pytest.raises(ValueError, match="rate"):
        parse_rate(text)


def test_pacing_batch_size_spreads_low_rates() -> None:
    assert pacing_batch_size(None, 500) == 500
    assert pacing_batch_size(5000, 500) == 250
    assert pacing_batch_size(1_000_000, 500) == 500
    assert pacing_batch_size(3, 500) == 1


def test_pacer_holds_the_average_rate_and_bounds_catch_up() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    pacer = Pacer(100.0, burst_s=1.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(10):
        pacer.wait(10)  # writes take no time: the pacer must wait 0.1 s per 10 ops
    assert now[0] == pytest.approx(1.0)
    now[0] += 5.0  # a 5 s stall (a slow batch): afterwards at most 1 s of debt is caught up
    slept.clear()
    for _ in range(20):
        pacer.wait(10)
    # 200 ops take 2 s at 100/s; free: the 10 of the stalled batch plus 1 s (100 ops) of burst.
    assert sum(slept) == pytest.approx(0.9)
    assert Pacer(None).wait(10) is None


def test_an_error_while_generating_ahead_reaches_the_caller() -> None:
    def broken() -> Iterator[Batch]:
        raise ValueError("generator broke")
        yield  # pragma: no cover

    with pytest.raises(ValueError, match="generator broke"):
        run(None, broken(), prefetch=2)  # type: ignore[arg-type]


# ---- CLI arguments (no server needed: arguments are checked before connecting) -----------------

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ops", "insert:70,foo:30"], "Invalid value for '--ops': unknown operation 'foo'"),
        (["--ops", "insert:70,update:25"], "sum to 95, not 100"),
        (["--rate", "abc"], "Invalid value for '--rate': 'abc' is not a rate"),
        (["--transactions", "2"], "--transactions"),
        (["--id-type", "guid"], "--id-type"),
    ],
)
def test_cli_bad_argument_is_one_clear_error(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["generate", *args])
    assert result.exit_code == 2
    assert message in _flat(result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_cli_bad_argument_in_a_real_process_has_no_traceback() -> None:
    lakeward = Path(sys.executable).parent / "lakeward"
    proc = subprocess.run(
        [str(lakeward), "generate", "--ops", "insert:70,foo:30"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "unknown operation 'foo'" in _flat(proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout


def test_cli_unreachable_server_is_one_line() -> None:
    uri = "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300"
    result = runner.invoke(app, ["generate", "--uri", uri, "--docs", "10"])
    assert result.exit_code == 1
    assert "cannot reach MongoDB at mongodb://127.0.0.1:1/" in _flat(result.output)


# ---- real mongod ------------------------------------------------------------------------------


@pytest.fixture
def client(mongo) -> Iterator[MongoClient[Any]]:
    with MongoClient(mongo.mongo_uri) as c:
        yield c


@pytest.fixture
def database(client: MongoClient[Any], unique: str) -> Iterator[str]:
    name = f"gen_{unique}"
    yield name
    client.drop_database(name)


def _live_ids(gen: Generator, batches: list[Batch]) -> set[Any]:
    live: set[Any] = set()
    for batch in batches:
        for op in batch.operations:
            if op.kind is OpKind.INSERT:
                live.add(op.id)
            elif op.kind is OpKind.DELETE:
                live.discard(op.id)
    return live


def test_run_leaves_exactly_the_inserted_minus_deleted_documents(
    client: MongoClient[Any], database: str
) -> None:
    coll = client[database].orders
    gen = Generator(21, mix=ALL_KINDS, id_type="mixed", drift=True, drift_every=600)
    batches = list(gen.batches(3000, initial=500, batch_size=200))
    result = run(coll, batches, rate=None)

    assert result.errors == 0, result.error_samples
    assert result.initial == 500
    assert result.operations == 3000
    assert result.inserted == 500 + result.counts["insert"]
    assert result.deleted == result.counts["delete"]  # every delete hit a live document
    assert result.matched == result.counts["update"] + result.counts["replace"]
    assert coll.count_documents({}) == result.inserted - result.deleted
    # An independent check: exactly the ids the operations left alive are there.
    expected = {bson.encode({"i": i}) for i in _live_ids(gen, batches)}
    assert {bson.encode({"i": d["_id"]}) for d in coll.find({}, {"_id": 1})} == expected
    assert coll.count_documents({"revision": {"$gt": 0}}) > 0  # updates applied ($inc)


def test_transactional_batches_commit(client: MongoClient[Any], database: str) -> None:
    coll = client[database].orders
    gen = Generator(5, mix=ALL_KINDS)
    batches = list(gen.batches(1200, initial=100, batch_size=100, transactions=1.0))
    result = run(coll, batches, rate=None)
    assert result.errors == 0, result.error_samples
    assert result.transactions == sum(1 for b in batches if not b.initial) == 12
    assert coll.count_documents({}) == result.inserted - result.deleted


def test_awkward_values_round_trip_byte_for_byte(client: MongoClient[Any], database: str) -> None:
    coll = client[database].orders
    gen = Generator(42, extreme_dates=True)
    batches = list(gen.batches(0, initial=2000, batch_size=500))
    result = run(coll, batches, rate=None)
    assert result.errors == 0 and result.inserted == 2000

    # Every document reads back as exactly the bytes that were written.
    raw = coll.with_options(
        codec_options=CodecOptions(
            document_class=RawBSONDocument, datetime_conversion=DatetimeConversion.DATETIME_AUTO
        )
    )
    stored = {bson.encode({"i": d["_id"]}): d.raw for d in raw.find()}
    for op in (op for b in batches for op in b.operations):
        assert stored[bson.encode({"i": op.id})] == bson.encode(op.document), op.id

    # And the values people get wrong, decoded through ordinary options.
    typed = coll.with_options(
        codec_options=CodecOptions(
            tz_aware=True, datetime_conversion=DatetimeConversion.DATETIME_AUTO
        )
    )
    balance = next(
        op.document["ledger"]["balance"]
        for b in batches
        for op in b.operations
        if len(op.document["ledger"]["balance"].to_decimal().as_tuple().digits) == 34
    )
    found = typed.find_one({"ledger.balance": balance})
    assert found is not None and str(found["ledger"]["balance"]) == str(balance)
    old = typed.find_one({"customer.born": {"$lt": datetime(1970, 1, 1, tzinfo=UTC)}})
    assert old is not None and old["customer"]["born"].year < 1970
    top = typed.find_one({"ledger.entry": Int64(2**63 - 1)})
    assert top is not None and top["ledger"]["entry"] == 2**63 - 1
    assert isinstance(top["ledger"]["entry"], Int64)
    bottom = typed.find_one({"ledger.entry": Int64(-(2**63))})
    assert bottom is not None and bottom["ledger"]["entry"] == -(2**63)
    far = typed.find_one({"epoch_ms": {"$exists": True}})
    assert far is not None and isinstance(far["epoch_ms"], DatetimeMS)


def test_cli_end_to_end(mongo, client: MongoClient[Any], database: str) -> None:
    args = [
        "generate", "--uri", mongo.mongo_uri, "--db", database, "--collection", "orders",
        "--ops", ALL_KINDS, "--docs", "600", "--initial", "100", "--seed", "3",
        "--transactions", "0.5", "--drift", "--batch", "50", "--rate", "unlimited",
    ]  # fmt: skip
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["operations"] == 600 and summary["initial"] == 100
    assert summary["errors"] == 0 and summary["transactions"] > 0
    assert summary["drift_stage"] == 4
    count = client[database].orders.count_documents({})
    assert count == summary["inserted"] - summary["deleted"]

    # The same seed again collides on _id: a non-zero exit that says what to do.
    again = runner.invoke(app, [*args, "--json"])
    assert again.exit_code == 1
    assert "drop the collection first or use another seed" in _flat(again.output)

    # --drop starts over; the human summary names the counts and the achieved rate.
    fresh = runner.invoke(app, [*args, "--drop"])
    assert fresh.exit_code == 0, fresh.output
    assert "achieved rate" in fresh.stdout and "replace" in fresh.stdout
    assert client[database].orders.count_documents({}) == count


def test_cli_paced_run_writes_everything(mongo, client: MongoClient[Any], database: str) -> None:
    args = ["generate", "--uri", mongo.mongo_uri, "--db", database, "--docs", "200"]
    result = runner.invoke(app, [*args, "--rate", "2000/s", "--json", "--id-type", "uuid"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["operations"] == 200 and summary["target_rate"] == 2000.0
    assert summary["batches"] == 2  # batches capped at rate/20 = 100
    assert client[database].orders.count_documents({}) == summary["inserted"] - summary["deleted"]
