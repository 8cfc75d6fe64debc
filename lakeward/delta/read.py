"""Reading a lake on an object store through deltalake's Arrow dataset (for `lakeward query`).

DuckDB's delta extension reads local lakes; on ``s3://`` it would need DuckDB's ``httpfs``
extension, which does not load offline. So for an object-store lake the tables are found by
listing ``<lake>/<db>/<collection>/_delta_log`` with deltalake's own object store (the same
storage options and credentials as the pipeline's writers), and each table is read as
``DeltaTable(uri, version=N).to_pyarrow_dataset()``: pinned to one version, scanned lazily (DuckDB
pushes projections and filters into it). Storage problems raise
lakeward.delta.errors.TableStorageError.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow.dataset as ds
import pyarrow.fs as pafs
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError
from deltalake.fs import DeltaStorageHandler

from lakeward.delta.errors import check_storage_options, storage_error

__all__ = ["StoredTable", "TableReadError", "list_tables", "open_dataset"]

_COMMIT = re.compile(r"(\d{20})\.json")


class TableReadError(RuntimeError):
    """A table that is there but cannot be read as an Arrow dataset (e.g. deletion vectors)."""


@dataclass(frozen=True)
class StoredTable:
    database: str  # the first path level under the lake: a MongoDB database, or `_lakeward`
    name: str  # the second: a collection, or `dead_letters`
    versions: tuple[int, ...]  # the commit versions in its log, ascending


def list_tables(lake: str, options: Mapping[str, str]) -> tuple[list[StoredTable], bool]:
    """The tables at ``<lake>/<db>/<collection>`` with at least one commit, and whether `lake`
    is itself a table (has a ``_delta_log``)."""
    check_storage_options(lake, options)
    store = pafs.PyFileSystem(DeltaStorageHandler(lake, dict(options)))
    try:
        if _is_dir(store, "_delta_log"):
            return [], True
        found = []
        for database in _subdirs(store, ""):
            for table in _subdirs(store, database):
                versions = _commit_versions(store, f"{table}/_delta_log")
                if versions:  # no commit yet: being created
                    found.append(StoredTable(database, table.rsplit("/", 1)[1], versions))
    except (OSError, DeltaError) as exc:
        problem = storage_error(lake, options, exc)
        if problem is None:
            raise
        raise problem from exc
    return found, False


def open_dataset(uri: str, options: Mapping[str, str], version: int) -> ds.Dataset:
    """Version `version` of the table at `uri` as a lazily scanned Arrow dataset."""
    check_storage_options(uri, options)
    try:
        table = DeltaTable(uri, version=version, storage_options=dict(options))
        return table.to_pyarrow_dataset()
    except (OSError, DeltaError) as exc:
        problem = storage_error(uri, options, exc)
        if problem is not None:
            raise problem from exc
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TableReadError(f"{uri}: cannot read version {version}: {first}") from exc


def _is_dir(store: pafs.FileSystem, path: str) -> bool:
    (info,) = store.get_file_info([path])
    return bool(info.type == pafs.FileType.Directory)


def _subdirs(store: pafs.FileSystem, path: str) -> list[str]:
    listed = store.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(i.path for i in listed if i.type == pafs.FileType.Directory)


def _commit_versions(store: pafs.FileSystem, log: str) -> tuple[int, ...]:
    # A commit is <20-digit version>.json; checkpoints, .crc and temporary files are not commits.
    listed = store.get_file_info(pafs.FileSelector(log, allow_not_found=True))
    found = (_COMMIT.fullmatch(i.base_name) for i in listed)
    return tuple(sorted(int(m.group(1)) for m in found if m))
