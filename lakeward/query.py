"""Read the lake with SQL: DuckDB views over every Delta table, at the latest or a pinned version.

A lake root (a pipeline's sink ``uri``) holds one Delta table per collection at
``<lake>/<db>/<collection>`` and the dead-letter table at ``<lake>/_lakeward/dead_letters``. Each
becomes a DuckDB view named ``<db>.<collection>`` (one schema per database). On local disk the view
reads ``delta_scan(path, version => N)``, through the `delta` extension loaded offline from its
PyPI wheel (`lakeward.duck`); on ``s3://`` (where that extension would need ``httpfs``, which does
not load offline) it reads deltalake's Arrow dataset of that version (`lakeward.delta.read`),
registered in DuckDB. Every view is pinned when the lake is opened, to the version asked for or
to the latest one, so one query sees one version of each table even while a pipeline writes.

Read-only by construction, in two independent layers: only ``SELECT`` / ``EXPLAIN`` statements run
(DuckDB's own parser decides, not a regex), and the connection is sandboxed before any user SQL
runs: no file access outside the lake (none at all for an object-store lake, whose tables DuckDB
reads only through the registered datasets), configuration locked, so no ``COPY``, ``ATTACH``,
``INSTALL`` or ``SET`` can reach the filesystem. The views themselves only scan.

Rows of current-state tables with ``_op = 'd'`` are tombstones (a deleted document, kept while a
snapshot runs); the views hide them unless asked for with ``tombstones=True``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import duckdb
import pyarrow as pa

from lakeward import duck
from lakeward.delta import read
from lakeward.delta.errors import TableStorageError, is_sensitive_option
from lakeward.delta.storage import is_object_store, lake_storage_options
from lakeward.secrets import SecretReferenceError, is_reference
from lakeward.settings import Settings

__all__ = [
    "DEFAULT_LAKE",
    "Lake",
    "LakeTable",
    "QueryError",
    "discover_tables",
    "open_lake",
    "parse_storage_option",
    "parse_version_pin",
    "query",
]

#: The sink's default root (workflows/spec.py `Sink.uri`), relative to the working directory.
DEFAULT_LAKE = Path(".lakeward/lake")

_COMMIT = re.compile(r"^(\d{20})\.json$")
_READ_ONLY = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}


class QueryError(ValueError):
    """A query that cannot run, with a one-line message saying what to do instead."""


@dataclass(frozen=True)
class LakeTable:
    """One Delta table of the lake and the commit versions its log holds."""

    schema: str  # the MongoDB database, or `_lakeward`
    name: str  # the collection, or `dead_letters`
    uri: str  # an absolute local path, or s3://bucket/.../<db>/<collection>
    versions: tuple[int, ...]  # ascending; the versions time travel can reach

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def latest(self) -> int:
        return self.versions[-1]


@dataclass
class Lake:
    """A DuckDB connection with one read-only view per Delta table, each pinned to a version."""

    root: str  # the lake as given: a local path or an s3:// URI
    tables: dict[str, LakeTable]
    pinned: dict[str, int]  # "<db>.<collection>" -> the version its view reads
    connection: duckdb.DuckDBPyConnection = field(repr=False)

    def sql(self, sql: str, limit: int | None = None) -> pa.Table:
        """Run one read-only statement over the views; at most `limit` rows when given."""
        statements = _parse(self.connection, sql)
        if len(statements) != 1:
            raise QueryError(
                f"expected one SQL statement, got {len(statements)}; run them one at a time"
            )
        if statements[0].type not in _READ_ONLY:
            kind = statements[0].type.name
            raise QueryError(
                f"only SELECT (and EXPLAIN) can run over the lake, not {kind}: "
                "queries are read-only; write through a pipeline instead"
            )
        try:
            relation = self.connection.sql(sql)
            if relation is None:  # pragma: no cover - SELECT and EXPLAIN always yield rows
                return pa.table({})
            if limit is not None:
                relation = relation.limit(limit)
            return relation.to_arrow_table()
        except duckdb.Error as exc:
            raise self._error(exc) from exc

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> Lake:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _error(self, exc: duckdb.Error) -> QueryError:
        message = _first_line(exc)
        if isinstance(exc, duckdb.CatalogException):
            message += f" (tables: {', '.join(sorted(self.tables))})"
        elif isinstance(exc, duckdb.PermissionException):
            message += " (queries can read only the lake's tables)"
        return QueryError(message)


def discover_tables(
    lake: str | Path, storage_options: Mapping[str, str] | None = None
) -> dict[str, LakeTable]:
    """The Delta tables at ``<lake>/<db>/<collection>``, by ``"<db>.<collection>"``.

    `storage_options` are for an ``s3://`` lake (see `open_lake`). Raises QueryError when the
    lake is missing or unreachable, is itself one table, or holds none.
    """
    if is_object_store(str(lake)):
        return _discover_stored(str(lake).rstrip("/"), _options(str(lake), storage_options))
    root = _local_root(lake, storage_options)
    if not root.is_dir():
        raise QueryError(
            f"lake {root} does not exist; pass --lake with a pipeline's sink uri "
            f"(default {DEFAULT_LAKE}, relative to where the pipeline ran)"
        )
    if (root / "_delta_log").is_dir():
        raise QueryError(
            f"{root} is a single Delta table, not a lake; pass the lake root "
            f"({root.parent.parent}), whose tables are <db>/<collection>"
        )
    tables: dict[str, LakeTable] = {}
    for log in sorted(root.glob("*/*/_delta_log")):
        versions = _commit_versions(log)
        if not versions:  # being created: no commit yet
            continue
        path = log.parent
        table = LakeTable(path.parent.name, path.name, str(path.resolve()), versions)
        tables[table.qualified] = table
    return _found(root, tables)


def _discover_stored(root: str, options: Mapping[str, str]) -> dict[str, LakeTable]:
    try:
        stored, is_table = read.list_tables(root, options)
    except TableStorageError as exc:
        raise QueryError(str(exc)) from exc
    if is_table:
        parent = root.rsplit("/", 2)[0]
        raise QueryError(
            f"{root} is a single Delta table, not a lake; pass the lake root ({parent}), whose "
            "tables are <db>/<collection>"
        )
    tables = {}
    for t in stored:
        table = LakeTable(t.database, t.name, f"{root}/{t.database}/{t.name}", t.versions)
        tables[table.qualified] = table
    return _found(root, tables)


def _found(root: str | Path, tables: dict[str, LakeTable]) -> dict[str, LakeTable]:
    if not tables:
        raise QueryError(
            f"no Delta tables under {root} (expected <db>/<collection>/_delta_log); "
            "has a pipeline with this sink uri applied a batch yet?"
        )
    return tables


def open_lake(
    lake: str | Path = DEFAULT_LAKE,
    versions: Mapping[str, int] | None = None,
    tombstones: bool = False,
    storage_options: Mapping[str, str] | None = None,
) -> Lake:
    """Open the lake's tables as views, pinned to `versions` ("<db>.<collection>" -> N) or latest.

    An ``s3://`` lake reads with the process's ``LAKEWARD_LAKE_STORAGE_OPTIONS`` and then
    `storage_options` over them key by key (values may be ``env:``/``file:`` references); a local
    lake takes none. Close the returned Lake (or use it as a context manager) when done.
    """
    stored = is_object_store(str(lake))
    options = _options(str(lake), storage_options) if stored else {}
    tables = discover_tables(lake, storage_options)
    pinned = {name: table.latest for name, table in tables.items()}
    for name, version in (versions or {}).items():
        pinned[name] = _checked_version(tables, name, version)
    try:
        con = duck.connect() if not stored else duckdb.connect()
    except duck.DuckDeltaError as exc:
        raise QueryError(f"cannot load DuckDB's delta extension: {exc}") from exc
    try:
        for index, (name, table) in enumerate(tables.items()):
            if stored:
                scan = _register(con, index, table, pinned[name], options)
            else:
                scan = f"delta_scan({_literal(table.uri)}, version => {int(pinned[name])})"
            _create_view(con, table, scan, tombstones)
        _sandbox(con, None if stored else _local_root(lake).resolve())
    except duckdb.Error as exc:
        con.close()
        raise QueryError(f"cannot open the lake {lake}: {_first_line(exc)}") from exc
    except (TableStorageError, read.TableReadError) as exc:
        con.close()
        raise QueryError(str(exc)) from exc
    return Lake(str(lake), tables, pinned, con)


def query(
    sql: str,
    lake: str | Path = DEFAULT_LAKE,
    versions: Mapping[str, int] | None = None,
    limit: int | None = None,
    tombstones: bool = False,
    storage_options: Mapping[str, str] | None = None,
) -> pa.Table:
    """Run one read-only SQL statement over the lake's tables and return the rows.

    Tables are views named ``<db>.<collection>`` and ``_lakeward.dead_letters``. `versions` pins
    tables to older versions (time travel); the others read their latest version. Tombstones
    (``_op = 'd'`` rows of current-state tables) are hidden unless `tombstones` is true.
    `storage_options` are for an ``s3://`` lake, as in `open_lake`.
    """
    with open_lake(lake, versions, tombstones, storage_options) as opened:
        return opened.sql(sql, limit)


def parse_version_pin(text: str) -> tuple[str, int]:
    """``"shop.orders=3"`` -> ``("shop.orders", 3)``."""
    name, sep, number = text.partition("=")
    if not sep or "." not in name.strip() or not number.strip().isdigit():
        raise QueryError(
            f"--version {text!r}: expected <db>.<collection>=<version>, e.g. shop.orders=3"
        )
    return name.strip(), int(number)


def parse_storage_option(text: str) -> tuple[str, str]:
    """``"AWS_REGION=eu-west-1"`` -> ``("AWS_REGION", "eu-west-1")``.

    A credential (a key naming a secret, token, password or key) must be a reference
    (``env:VAR``, ``file:/path``): a value on a command line is visible to other users (ps) and
    kept in shell history.
    """
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise QueryError(
            f"--storage-option {key or text!r}: expected KEY=VALUE, e.g. AWS_REGION=eu-west-1"
        )
    if is_sensitive_option(key) and not is_reference(value):
        raise QueryError(
            f"--storage-option {key} must be a secret reference (env:VAR, file:/path or "
            "vault:<mount>/<path>#<key>), not a value: command lines are visible to other users "
            "and kept in shell history"
        )
    return key, value


def _options(lake: str, overrides: Mapping[str, str] | None) -> dict[str, str]:
    try:
        return lake_storage_options(lake, Settings(), overrides)
    except SecretReferenceError as exc:
        raise QueryError(f"storage options for {lake}: {exc}") from exc


def _register(
    con: duckdb.DuckDBPyConnection,
    index: int,
    table: LakeTable,
    version: int,
    options: Mapping[str, str],
) -> str:
    # The dataset is pinned to `version`; DuckDB scans it lazily through the registered name.
    name = f"__lakeward_table_{index}"
    con.register(name, read.open_dataset(table.uri, options, version))
    return _ident(name)


def _local_root(lake: str | Path, storage_options: Mapping[str, str] | None = None) -> Path:
    text = str(lake)
    if storage_options:
        raise QueryError(
            f"storage options are for s3:// lakes; {text} is a local path (drop "
            "--storage-option, or pass the s3:// URI of the lake)"
        )
    return Path(urlsplit(text).path if text.startswith("file://") else text)


def _commit_versions(log: Path) -> tuple[int, ...]:
    # A commit is <20-digit version>.json; checkpoints, .crc and temporary files are not commits.
    found = (_COMMIT.match(p.name) for p in log.iterdir())
    return tuple(sorted(int(m.group(1)) for m in found if m))


def _checked_version(tables: Mapping[str, LakeTable], name: str, version: int) -> int:
    table = tables.get(name)
    if table is None:
        raise QueryError(f"cannot pin {name}: no such table; tables: {', '.join(sorted(tables))}")
    if version not in table.versions:
        raise QueryError(
            f"{name} has no version {version}; versions {_ranges(table.versions)} exist"
        )
    return version


def _ranges(versions: tuple[int, ...]) -> str:
    spans: list[list[int]] = []
    for v in versions:
        if spans and v == spans[-1][1] + 1:
            spans[-1][1] = v
        else:
            spans.append([v, v])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _create_view(
    con: duckdb.DuckDBPyConnection, table: LakeTable, scan: str, tombstones: bool
) -> None:
    where = ""
    if not tombstones and _is_current_state(con, table, scan):
        where = " WHERE _op <> 'd'"
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(table.schema)}")
    con.execute(
        f"CREATE VIEW {_ident(table.schema)}.{_ident(table.name)} AS SELECT * FROM {scan}{where}"
    )


def _is_current_state(con: duckdb.DuckDBPyConnection, table: LakeTable, scan: str) -> bool:
    # Change-log tables (<collection>__changes) keep `_op = 'd'` rows as real events.
    if table.schema == "_lakeward" or table.name.endswith("__changes"):
        return False
    return {"_op", "_seq"} <= set(con.sql(f"SELECT * FROM {scan} LIMIT 0").columns)


def _sandbox(con: duckdb.DuckDBPyConnection, root: Path | None) -> None:
    # delta_scan still has to read a local lake; nothing else on disk is reachable (nothing at all
    # for an object-store lake, read through its registered datasets), and the user's SQL cannot
    # undo this. Writes are refused earlier, by statement type.
    if root is not None:
        con.execute(f"SET allowed_directories = [{_literal(str(root) + '/')}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def _parse(con: duckdb.DuckDBPyConnection, sql: str) -> list[duckdb.Statement]:
    try:
        return list(con.extract_statements(sql))
    except duckdb.Error as exc:
        raise QueryError(_first_line(exc)) from exc


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
