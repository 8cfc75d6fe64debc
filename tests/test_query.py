"""Reading the lake: SQL over real Delta tables, time travel, clear errors, and no way to write."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from typer.testing import CliRunner

from lakeward.cli import app
from lakeward.delta.table import CURRENT_STATE_SCHEMA, DEAD_LETTER_SCHEMA, TxnTable
from lakeward.query import QueryError, discover_tables, open_lake, query

runner = CliRunner()
LAKEWARD = Path(sys.executable).parent / "lakeward"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _rows(*changes: tuple[str, str | None, str, str]) -> pa.Table:
    """(_id, _doc, _op, _seq) per row, the lineage columns filled in."""
    n = len(changes)
    return pa.table(
        {
            "_id": [c[0] for c in changes],
            "_id_type": ["string"] * n,
            "_doc": [c[1] for c in changes],
            "_op": [c[2] for c in changes],
            "_seq": [c[3] for c in changes],
            "_source_ts": [NOW] * n,
            "_kafka_topic": ["cdc.shop"] * n,
            "_kafka_partition": pa.array([0] * n, pa.int32()),
            "_kafka_offset": pa.array(range(n), pa.int64()),
            "_ingested_at": [NOW] * n,
        },
        schema=CURRENT_STATE_SCHEMA,
    )


def _seq(n: int) -> str:
    return f"{n:024x}"


def _merge(table: TxnTable, rows: pa.Table, offset: int, tombstones: bool = False) -> int:
    app_id = f"test/{table.uri}/0"
    read = table.applied_versions([app_id])
    outcome = table.merge_current_state(rows, {app_id: offset}, read, keep_tombstones=tombstones)
    assert outcome.version is not None
    return outcome.version


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    """shop.orders at versions 1..3 (an insert, an update, a delete kept as a tombstone),
    shop.customers, crm.accounts, and one dead letter."""
    root = tmp_path / "lake"
    orders = TxnTable(str(root / "shop" / "orders"), CURRENT_STATE_SCHEMA)
    assert _merge(orders, _rows(("o1", '{"total": 10}', "c", _seq(1)),
                                ("o2", '{"total": 20}', "c", _seq(2))), 1) == 1  # fmt: skip
    assert _merge(orders, _rows(("o1", '{"total": 11}', "u", _seq(3))), 2) == 2
    assert _merge(orders, _rows(("o2", None, "d", _seq(4))), 3, tombstones=True) == 3

    customers = TxnTable(str(root / "shop" / "customers"), CURRENT_STATE_SCHEMA)
    _merge(customers, _rows(("c1", '{"name": "Ada"}', "c", _seq(5))), 1)
    accounts = TxnTable(str(root / "crm" / "accounts"), CURRENT_STATE_SCHEMA)
    _merge(accounts, _rows(("a1", '{"plan": "pro"}', "c", _seq(6))), 1)

    dead = TxnTable(str(root / "_lakeward" / "dead_letters"), DEAD_LETTER_SCHEMA)
    letter = pa.table(
        {
            "pipeline": ["orders"], "reason": ["malformed_envelope"], "error": ["no payload"],
            "kafka_topic": ["cdc.shop.orders"], "kafka_partition": pa.array([0], pa.int32()),
            "kafka_offset": pa.array([7], pa.int64()), "key": [b"k"], "value": [b"\xff"],
            "dead_at": [NOW],
        },
        schema=DEAD_LETTER_SCHEMA,
    )  # fmt: skip
    dead.append(letter, {"orders/cdc.shop.orders/0": 7}, {"orders/cdc.shop.orders/0": None})
    return root


def _files(table: Path) -> set[str]:
    return {str(p.relative_to(table)) for p in table.rglob("*")}


def test_every_table_is_a_view_named_db_dot_collection(lake: Path) -> None:
    assert sorted(discover_tables(lake)) == [
        "_lakeward.dead_letters", "crm.accounts", "shop.customers", "shop.orders",
    ]  # fmt: skip
    rows = query(
        """
        SELECT 'order' AS kind, _id, json_extract(_doc, '$.total')::INT AS n FROM shop.orders
        UNION ALL SELECT 'customer', _id, NULL FROM shop.customers
        UNION ALL SELECT 'dead', reason, kafka_offset FROM _lakeward.dead_letters
        UNION ALL SELECT 'account', _id, NULL FROM crm.accounts
        ORDER BY kind, _id
        """,
        lake=lake,
    )
    assert rows.to_pylist() == [
        {"kind": "account", "_id": "a1", "n": None},
        {"kind": "customer", "_id": "c1", "n": None},
        {"kind": "dead", "_id": "malformed_envelope", "n": 7},
        {"kind": "order", "_id": "o1", "n": 11},
    ]


def test_tombstones_are_hidden_unless_asked_for(lake: Path) -> None:
    sql = "SELECT _id, _op FROM shop.orders ORDER BY _id"
    assert query(sql, lake=lake).to_pylist() == [{"_id": "o1", "_op": "u"}]
    assert query(sql, lake=lake, tombstones=True).to_pylist() == [
        {"_id": "o1", "_op": "u"},
        {"_id": "o2", "_op": "d"},
    ]


def test_time_travel_reads_the_pinned_version_and_others_at_their_latest(lake: Path) -> None:
    sql = "SELECT _id, _doc FROM shop.orders ORDER BY _id"
    assert query(sql, lake=lake, versions={"shop.orders": 1}).to_pylist() == [
        {"_id": "o1", "_doc": '{"total": 10}'},
        {"_id": "o2", "_doc": '{"total": 20}'},
    ]
    assert query(sql, lake=lake, versions={"shop.orders": 2}).column("_doc").to_pylist() == [
        '{"total": 11}',
        '{"total": 20}',
    ]
    assert query(sql, lake=lake, versions={"shop.orders": 0}).num_rows == 0  # created, empty
    with open_lake(lake, {"shop.orders": 1}) as opened:
        assert opened.pinned == {
            "shop.orders": 1, "shop.customers": 1, "crm.accounts": 1, "_lakeward.dead_letters": 1,
        }  # fmt: skip
        assert opened.sql("SELECT count(*) AS n FROM shop.customers").to_pylist() == [{"n": 1}]


def test_a_query_sees_one_version_even_while_the_table_moves_on(lake: Path) -> None:
    with open_lake(lake) as opened:
        orders = TxnTable(str(lake / "shop" / "orders"), CURRENT_STATE_SCHEMA)
        _merge(orders, _rows(("o3", '{"total": 30}', "c", _seq(9))), 4)
        assert opened.sql("SELECT _id FROM shop.orders").to_pylist() == [{"_id": "o1"}]
    assert query("SELECT count(*) AS n FROM shop.orders", lake=lake).to_pylist() == [{"n": 2}]


def test_limit_caps_the_rows(lake: Path) -> None:
    rows = query("SELECT * FROM shop.orders", lake=lake, tombstones=True, limit=1)
    assert rows.num_rows == 1


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("missing", "does not exist; pass --lake"),
        ("empty", "no Delta tables under"),
        ("lake/shop/orders", "is a single Delta table, not a lake; pass the lake root"),
    ],
)
def test_a_path_without_a_lake_says_what_to_pass(lake: Path, where: str, message: str) -> None:
    (lake.parent / "empty" / "shop").mkdir(parents=True)
    with pytest.raises(QueryError, match=message):
        query("SELECT 1", lake=lake.parent / where)


def test_a_file_uri_is_a_local_lake_and_s3_is_refused_with_what_to_do(lake: Path) -> None:
    assert query("SELECT _id FROM shop.customers", lake=f"file://{lake}").num_rows == 1
    with pytest.raises(QueryError, match="only local lakes can be queried for now; copy"):
        query("SELECT 1", lake="s3://bucket/lake")


def test_pinning_an_unknown_table_lists_the_tables(lake: Path) -> None:
    with pytest.raises(QueryError) as info:
        query("SELECT 1", lake=lake, versions={"shop.invoices": 1})
    assert str(info.value) == (
        "cannot pin shop.invoices: no such table; tables: "
        "_lakeward.dead_letters, crm.accounts, shop.customers, shop.orders"
    )


def test_pinning_a_missing_version_says_which_exist(lake: Path) -> None:
    with pytest.raises(QueryError) as info:
        query("SELECT 1", lake=lake, versions={"shop.orders": 9})
    assert str(info.value) == "shop.orders has no version 9; versions 0-3 exist"


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELEC 1", 'Parser Error: syntax error at or near "SELEC"'),
        ("SELECT nope FROM shop.orders", 'Binder Error: Referenced column "nope" not found'),
        ("SELECT * FROM orders", "Table with name orders does not exist"),
        ("SELECT 1; SELECT 2", "expected one SQL statement, got 2"),
        ("", "expected one SQL statement, got 0"),
    ],
)
def test_bad_sql_gets_duckdbs_message_on_one_line(lake: Path, sql: str, message: str) -> None:
    with pytest.raises(QueryError) as info:
        query(sql, lake=lake)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_an_unknown_table_lists_the_views(lake: Path) -> None:
    with pytest.raises(QueryError, match=r"\(tables: _lakeward.dead_letters, crm.accounts, "):
        query("SELECT * FROM orders", lake=lake)


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("INSERT INTO shop.orders SELECT * FROM shop.orders", "INSERT"),
        ("DELETE FROM shop.orders", "DELETE"),
        ("COPY (SELECT * FROM shop.orders) TO '{table}/part-evil.parquet'", "COPY"),
        ("CREATE TABLE shop.evil AS SELECT 1", "CREATE"),
        ("ATTACH '{table}/evil.db'", "ATTACH"),
        ("ATTACH '{table}' AS d (TYPE delta)", "ATTACH"),  # the extension's (blind insert) writer
        ("SET enable_external_access = true", "SET"),
        ("EXPORT DATABASE '{table}'", "EXPORT"),
    ],
)
def test_a_query_cannot_write_into_the_lake(lake: Path, sql: str, kind: str) -> None:
    table = lake / "shop" / "orders"
    before_files = _files(table)
    with pytest.raises(QueryError, match=f"only SELECT .* not {kind}: queries are read-only"):
        query(sql.format(table=table), lake=lake)
    assert DeltaTable(str(table)).version() == 3
    assert _files(table) == before_files


def test_a_query_cannot_read_files_outside_the_lake(lake: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    with pytest.raises(QueryError, match=r"Permission Error: .*can read only the lake's tables"):
        query(f"SELECT * FROM read_csv('{secret}')", lake=lake)


def test_cli_prints_the_rows_and_the_versions_read(lake: Path) -> None:
    result = runner.invoke(
        app, ["query", "SELECT _id, _doc FROM shop.orders ORDER BY _id", "--lake", str(lake)]
    )
    assert result.exit_code == 0, result.output
    assert "o1" in result.stdout and '{"total": 11}' in result.stdout
    assert "o2" not in result.stdout  # the tombstone
    assert "1 row · read" in result.stdout and "shop.orders@v3" in result.stdout


def test_cli_time_travel_and_csv(lake: Path) -> None:
    result = runner.invoke(app, [
        "query", "SELECT _id, _op, _source_ts FROM shop.orders ORDER BY _id", "--lake", str(lake),
        "--version", "shop.orders=1", "--format", "csv",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "_id,_op,_source_ts\no1,c,2026-01-02T03:04:05+00:00\no2,c,2026-01-02T03:04:05+00:00\n"
    )


def test_cli_json_encodes_bytes_as_base64_and_honours_the_limit(lake: Path) -> None:
    result = runner.invoke(app, [
        "query", "SELECT key, value, dead_at FROM _lakeward.dead_letters", "--lake", str(lake),
        "--format", "json",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {"key": "aw==", "value": "/w==", "dead_at": "2026-01-02T03:04:05+00:00"}
    ]
    result = runner.invoke(app, [
        "query", "SELECT * FROM range(5)", "--lake", str(lake), "--format", "json", "--limit", "2",
    ])  # fmt: skip
    assert [r["range"] for r in json.loads(result.stdout)] == [0, 1]


def test_cli_table_says_when_rows_were_cut(lake: Path) -> None:
    result = runner.invoke(app, ["query", "SELECT * FROM range(150)", "--lake", str(lake)])
    assert result.exit_code == 0, result.output
    assert "100 rows (more rows: raise --limit" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["SELEC 1"], 'error: Parser Error: syntax error at or near "SELEC"'),
        (["SELECT 1", "--version", "shop.orders=9"], "error: shop.orders has no version 9"),
        (["SELECT 1", "--version", "orders"], "error: --version 'orders': expected <db>."),
        (["DROP VIEW shop.orders"], "error: only SELECT (and EXPLAIN) can run over the lake"),
    ],
)
def test_cli_errors_are_one_line_and_exit_1(lake: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["query", *args, "--lake", str(lake)])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(message), result.stderr
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_cli_in_a_plain_process_exits_cleanly(lake: Path, tmp_path: Path) -> None:
    # Reading through DuckDB, not DeltaTable.to_pyarrow_table(), which can abort at exit (134).
    ok = subprocess.run(
        [str(LAKEWARD), "query", "SELECT _id FROM shop.customers", "--lake", str(lake),
         "--format", "csv"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "_id\nc1\n", "")
    missing = subprocess.run(
        [str(LAKEWARD), "query", "SELECT 1"], capture_output=True, text=True, timeout=120,
        cwd=tmp_path,
    )  # fmt: skip
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: lake .lakeward/lake does not exist; pass --lake")
    assert missing.stderr.count("\n") == 1
