"""`lakeward query "<SQL>"`: DuckDB over the lake's Delta tables, latest or pinned versions."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import decimal
import sys
from enum import StrEnum
from typing import Annotated, Any

import orjson
import pyarrow as pa
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lakeward.query import (
    DEFAULT_LAKE,
    QueryError,
    open_lake,
    parse_storage_option,
    parse_version_pin,
)

console = Console()
err = Console(stderr=True, soft_wrap=True)  # one error, one line: never wrapped

#: Rows a rich table shows when --limit is not given; csv and json print every row.
TABLE_ROWS = 100


class Format(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def query(
    sql: Annotated[str, typer.Argument(help="One SELECT over <db>.<collection> views.")],
    lake: Annotated[
        str,
        typer.Option(
            "--lake", help="The lake root: a pipeline's sink uri (a local path or s3://...)."
        ),
    ] = str(DEFAULT_LAKE),
    version: Annotated[
        list[str] | None,
        typer.Option(
            "--version", help="Time travel: pin a table, <db>.<collection>=N (repeatable)."
        ),
    ] = None,
    format_: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.table,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", min=0, help=f"At most N rows (default: {TABLE_ROWS} for table, all else)."
        ),
    ] = None,
    tombstones: Annotated[
        bool, typer.Option("--tombstones", help="Include rows of deleted documents (_op = 'd').")
    ] = False,
    storage_option: Annotated[
        list[str] | None,
        typer.Option(
            "--storage-option",
            help="s3:// lakes: a deltalake storage option KEY=VALUE over "
            "LAKEWARD_LAKE_STORAGE_OPTIONS (repeatable); credentials only as env:VAR, "
            "file:/path or vault:<mount>/<path>#<key>.",
        ),
    ] = None,
) -> None:
    """Run SQL over the lake's Delta tables (read-only; DuckDB, local or s3:// lakes)."""
    shown = limit if limit is not None or format_ is not Format.table else TABLE_ROWS
    try:
        pins = dict(parse_version_pin(v) for v in version or [])
        options = dict(parse_storage_option(o) for o in storage_option or [])
        with open_lake(lake, pins, tombstones, options or None) as opened:
            # One row more than shown tells whether the output was cut.
            rows = opened.sql(sql, None if shown is None else shown + 1)
            pinned = opened.pinned
    except QueryError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    cut = shown is not None and rows.num_rows > shown
    if cut:
        rows = rows.slice(0, shown)
    if format_ is Format.csv:
        _write_csv(rows)
    elif format_ is Format.json:
        sys.stdout.write(orjson.dumps(rows.to_pylist(), default=_json_default).decode() + "\n")
    else:
        console.print(_rich_table(rows))
        more = " (more rows: raise --limit, or use --format csv)" if cut else ""
        versions = ", ".join(f"{name}@v{v}" for name, v in sorted(pinned.items()))
        plural = "" if rows.num_rows == 1 else "s"
        console.print(f"{rows.num_rows} row{plural}{more} · read {versions}", soft_wrap=True)


def _rich_table(rows: pa.Table) -> Table:
    table = Table()
    for name in rows.column_names:
        table.add_column(escape(name), overflow="fold")  # whole values, wrapped, never cut
    for row in rows.to_pylist():
        table.add_row(*(_cell(v) for v in row.values()))
    return table


def _write_csv(rows: pa.Table) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(rows.column_names)
    for row in rows.to_pylist():
        writer.writerow(["" if v is None else _text(v) for v in row.values()])


def _cell(value: Any) -> str:
    return "[dim]NULL[/]" if value is None else escape(_text(value))


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dict | list):
        return orjson.dumps(value, default=_json_default).decode()
    return str(value)


def _json_default(value: Any) -> Any:
    # orjson knows datetimes; bytes (dead letters' key and value) go as base64, decimals as text.
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, decimal.Decimal | dt.timedelta):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")
