"""DuckDB over Delta tables, offline: the `delta` extension loads from its PyPI wheel.

DuckDB normally downloads extensions at run time; that fails on machines without internet, so
the extension file shipped by `duckdb-extension-delta` (same version as duckdb) is loaded by path.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

__all__ = ["DuckDeltaError", "connect", "delta_extension_path"]


class DuckDeltaError(RuntimeError):
    """The delta extension is missing or does not match the installed duckdb."""


def delta_extension_path() -> Path:
    try:
        import duckdb_extension_delta  # type: ignore[import-untyped]
    except ImportError as exc:
        raise DuckDeltaError("duckdb-extension-delta is not installed; run `make setup`") from exc
    path = (
        Path(duckdb_extension_delta.__file__).parent
        / "extensions" / f"v{duckdb.__version__}" / "delta.duckdb_extension"
    )  # fmt: skip
    if not path.exists():
        raise DuckDeltaError(
            f"no delta extension for duckdb {duckdb.__version__} at {path}; "
            "install duckdb-extension-delta with the same version as duckdb"
        )
    return path


def connect() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with `delta_scan(uri[, version => N])` available."""
    con = duckdb.connect()
    con.execute(f"LOAD '{delta_extension_path()}'")
    return con
