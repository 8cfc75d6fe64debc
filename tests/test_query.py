"""Reading the lake: SQL over real Delta tables, time travel, clear errors, and no way to write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from typer.testing import CliRunner

from lakeward.cli import app
from lakeward.delta.table import DEAD_LETTER_SCHEMA, TxnTable
from lakeward.query import QueryError, discover_tables, open_lake, query
from lakeward.stack.servers_extra import LAKE_BUCKET, s3_storage_options

runner = CliRunner()
LAKEWARD = Path(sys.executable).parent / "lakeward"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
_TS = pa.timestamp("us", tz="UTC")

#: Current-state rows with the document as one JSON column: the query layer reads any columns, so
#: these tests keep their own schema while the pipeline's typed document columns evolve.
STATE_SCHEMA = pa.schema(
    [
        pa.field("_id", pa.string(), nullable=False),
        pa.field("_id_type", pa.string(), nullable=False),
        pa.field("_doc", pa.string()),
        pa.field("_op", pa.string(), nullable=False),
        pa.field("_seq", pa.string(), nullable=False),
        pa.field("_source_ts", _TS),
        pa.field("_kafka_topic", pa.string(), nullable=False),
        pa.field("_kafka_partition", pa.int32(), nullable=False),
        pa.field("_kafka_offset", pa.int64(), nullable=False),
        pa.field("_ingested_at", _TS, nullable=False),
    ]
)


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
        schema=STATE_SCHEMA,
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
    orders = TxnTable(str(root / "shop" / "orders"), STATE_SCHEMA)
    assert _merge(orders, _rows(("o1", '{"total": 10}', "c", _seq(1)),
                                ("o2", '{"total": 20}', "c", _seq(2))), 1) == 1  # fmt: skip
    assert _merge(orders, _rows(("o1", '{"total": 11}', "u", _seq(3))), 2) == 2
    assert _merge(orders, _rows(("o2", None, "d", _seq(4))), 3, tombstones=True) == 3

    customers = TxnTable(str(root / "shop" / "customers"), STATE_SCHEMA)
    _merge(customers, _rows(("c1", '{"name": "Ada"}', "c", _seq(5))), 1)
    accounts = TxnTable(str(root / "crm" / "accounts"), STATE_SCHEMA)
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
        orders = TxnTable(str(lake / "shop" / "orders"), STATE_SCHEMA)
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


def test_a_file_uri_is_a_local_lake(lake: Path) -> None:
    assert query("SELECT _id FROM shop.customers", lake=f"file://{lake}").num_rows == 1


def test_storage_options_are_refused_for_a_local_lake(lake: Path) -> None:
    with pytest.raises(
        QueryError, match=r"storage options are for s3:// lakes; .* is a local path"
    ):
        query("SELECT 1", lake=lake, storage_options={"AWS_REGION": "eu-west-1"})


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


# --- a lake on S3 (SeaweedFS from the test stack), read through deltalake's Arrow datasets -------

#: Credentials reach the query only as references: the key id through the process setting, the
#: secret through the call's own storage options.
KEY_ID_VAR, SECRET_VAR = "LAKEWARD_TEST_QUERY_KEY_ID", "LAKEWARD_TEST_QUERY_SECRET"
S3_SECRET = {"AWS_SECRET_ACCESS_KEY": f"env:{SECRET_VAR}"}


@pytest.fixture
def s3_lake(test_stack, unique: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """s3://lakeward/<unique>/lake: shop.orders at versions 0 (two orders) and 1 (one updated, one
    a tombstone), crm.accounts, and a dead letter; written with plain pyarrow tables."""
    options = s3_storage_options(test_stack.need("s3"))
    monkeypatch.setenv(KEY_ID_VAR, options["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv(SECRET_VAR, options["AWS_SECRET_ACCESS_KEY"])
    monkeypatch.setenv(
        "LAKEWARD_LAKE_STORAGE_OPTIONS",
        json.dumps({
            "AWS_ENDPOINT_URL": options["AWS_ENDPOINT_URL"], "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": options["AWS_REGION"], "AWS_ACCESS_KEY_ID": f"env:{KEY_ID_VAR}",
        }),
    )  # fmt: skip
    root = f"s3://{LAKE_BUCKET}/{unique}/lake"

    def orders(*rows: tuple[str, str, str, int | None]) -> pa.Table:
        return pa.table({
            "_id": [r[0] for r in rows], "_op": [r[1] for r in rows],
            "_seq": [r[2] for r in rows], "qty": pa.array([r[3] for r in rows], pa.int64()),
        })  # fmt: skip

    write_deltalake(f"{root}/shop/orders", orders(("o1", "c", "01", 1), ("o2", "c", "02", 2)),
                    storage_options=options)  # fmt: skip
    write_deltalake(f"{root}/shop/orders", orders(("o1", "u", "03", 11), ("o2", "d", "04", None)),
                    storage_options=options, mode="overwrite")  # fmt: skip
    write_deltalake(f"{root}/crm/accounts", pa.table({"_id": ["a1"], "plan": ["pro"]}),
                    storage_options=options)  # fmt: skip
    write_deltalake(f"{root}/_lakeward/dead_letters",
                    pa.table({"reason": ["malformed_envelope"], "key": [b"k"]}),
                    storage_options=options)  # fmt: skip
    return root


@pytest.mark.slow
def test_an_s3_lake_answers_the_same_sql_through_arrow_datasets(s3_lake: str) -> None:
    assert sorted(discover_tables(s3_lake, S3_SECRET)) == [
        "_lakeward.dead_letters", "crm.accounts", "shop.orders",
    ]  # fmt: skip
    rows = query(
        """
        SELECT 'order' AS kind, _id, qty AS n FROM shop.orders
        UNION ALL SELECT 'account', _id || ':' || plan, NULL FROM crm.accounts
        UNION ALL SELECT 'dead', reason, octet_length(key) FROM _lakeward.dead_letters
        ORDER BY kind, _id
        """,
        lake=s3_lake,
        storage_options=S3_SECRET,
    )
    assert rows.to_pylist() == [
        {"kind": "account", "_id": "a1:pro", "n": None},
        {"kind": "dead", "_id": "malformed_envelope", "n": 1},
        {"kind": "order", "_id": "o1", "n": 11},  # o2's tombstone is hidden
    ]
    tombstones = query("SELECT _id, _op FROM shop.orders ORDER BY _id", lake=s3_lake,
                       tombstones=True, storage_options=S3_SECRET)  # fmt: skip
    assert tombstones.to_pylist() == [{"_id": "o1", "_op": "u"}, {"_id": "o2", "_op": "d"}]


@pytest.mark.slow
def test_an_s3_lake_time_travels_and_stays_pinned_while_it_moves(s3_lake: str) -> None:
    sql = "SELECT _id, qty FROM shop.orders ORDER BY _id"
    old = query(sql, lake=s3_lake, versions={"shop.orders": 0}, storage_options=S3_SECRET)
    assert old.to_pylist() == [{"_id": "o1", "qty": 1}, {"_id": "o2", "qty": 2}]
    with open_lake(s3_lake, storage_options=S3_SECRET) as opened:
        assert opened.pinned == {"shop.orders": 1, "crm.accounts": 0, "_lakeward.dead_letters": 0}
        options = s3_storage_options_from_env()
        write_deltalake(f"{s3_lake}/crm/accounts", pa.table({"_id": ["a2"], "plan": ["free"]}),
                        storage_options=options, mode="append")  # fmt: skip
        assert opened.sql("SELECT count(*) AS n FROM crm.accounts").to_pylist() == [{"n": 1}]
    with pytest.raises(QueryError, match=r"shop.orders has no version 7; versions 0-1 exist"):
        query(sql, lake=s3_lake, versions={"shop.orders": 7}, storage_options=S3_SECRET)


def s3_storage_options_from_env() -> dict[str, str]:
    """The fixture's options with the references resolved, for writing beside a query."""
    options = json.loads(os.environ["LAKEWARD_LAKE_STORAGE_OPTIONS"])
    options["AWS_ACCESS_KEY_ID"] = os.environ[KEY_ID_VAR]
    options["AWS_SECRET_ACCESS_KEY"] = os.environ[SECRET_VAR]
    return options


@pytest.mark.slow
def test_an_s3_lake_is_read_only_and_reaches_no_local_file(s3_lake: str, tmp_path: Path) -> None:
    with pytest.raises(QueryError, match=r"only SELECT .* not INSERT: queries are read-only"):
        query("INSERT INTO crm.accounts VALUES ('x', 'y')", lake=s3_lake, storage_options=S3_SECRET)
    local = tmp_path / "local.csv"
    local.write_text("a\n1\n")
    with pytest.raises(QueryError, match=r"Permission Error: .*can read only the lake's tables"):
        query(f"SELECT * FROM read_csv('{local}')", lake=s3_lake, storage_options=S3_SECRET)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("where", "options", "message"),
    [
        ("s3://nope-{unique}/lake", S3_SECRET, "s3://nope-{unique}/lake: bucket 'nope-{unique}' "
         "does not exist at http://127.0.0.1:"),
        ("{lake}/nothing-here", S3_SECRET, "no Delta tables under {lake}/nothing-here (expected "
         "<db>/<collection>/_delta_log)"),
        ("{lake}/shop/orders", S3_SECRET, "{lake}/shop/orders is a single Delta table, not a lake; "
         "pass the lake root ({lake})"),
        ("{lake}", {"AWS_SECRET_ACCESS_KEY": "env:LAKEWARD_TEST_QUERY_WRONG"},
         "(S3 said SignatureDoesNotMatch); check AWS_SECRET_ACCESS_KEY and AWS_ACCESS_KEY_ID"),
        ("{lake}", {"AWS_SECRET_ACCESS_KEY": "env:LAKEWARD_TEST_QUERY_UNSET"},
         "storage options for {lake}: environment variable 'LAKEWARD_TEST_QUERY_UNSET' is not set"),
    ],
    ids=["no bucket", "no tables", "one table", "wrong secret", "unset reference"],
)  # fmt: skip
def test_an_s3_lake_that_cannot_be_read_says_why_on_one_line(
    s3_lake: str, unique: str, monkeypatch: pytest.MonkeyPatch, where: str, options, message: str
) -> None:
    monkeypatch.setenv("LAKEWARD_TEST_QUERY_WRONG", "wrong-secret-0123456789")
    monkeypatch.delenv("LAKEWARD_TEST_QUERY_UNSET", raising=False)
    with pytest.raises(QueryError) as info:
        query("SELECT 1", lake=where.format(lake=s3_lake, unique=unique), storage_options=options)
    text = str(info.value)
    assert message.format(lake=s3_lake, unique=unique) in text
    assert "\n" not in text
    for secret in (os.environ[SECRET_VAR], "wrong-secret-0123456789"):
        assert secret not in text


@pytest.mark.slow
def test_cli_reads_an_s3_lake_with_storage_options_in_a_plain_process(
    s3_lake: str, tmp_path: Path
) -> None:
    ok = subprocess.run(
        [str(LAKEWARD), "query", "SELECT _id, qty FROM shop.orders ORDER BY _id", "--lake", s3_lake,
         "--storage-option", f"AWS_SECRET_ACCESS_KEY=env:{SECRET_VAR}", "--format", "csv",
         "--version", "shop.orders=0"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "_id,qty\no1,1\no2,2\n", "")

    plain = ["--storage-option", "AWS_SECRET_ACCESS_KEY=plain-value"]
    result = runner.invoke(app, ["query", "SELECT 1", "--lake", s3_lake, *plain])
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "error: --storage-option AWS_SECRET_ACCESS_KEY must be a secret reference (env:VAR, "
        "file:/path or vault:<mount>/<path>#<key>), not a value"
    )
    assert "plain-value" not in result.stderr
    result = runner.invoke(app, ["query", "SELECT 1", "--lake", s3_lake, "--storage-option", "x"])
    assert result.stderr.startswith("error: --storage-option 'x': expected KEY=VALUE")
