"""The lake side of a reconciliation: a current-state table at one pinned version, read by range.

The table is opened as deltalake's Arrow dataset at the pinned version (local disk and object
stores alike, lakeward.delta.read) and queried with DuckDB, which pushes the projection and the
range prefilter into the scan. The prefilter narrows rows by `_id_type` and, where the canonical
text sorts as MongoDB does (ObjectIds, strings) or can be bounded (numbers, through a double),
by `_id`; the exact range test is then `order_key` in Python, the same one the source side uses.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import duckdb
import pyarrow as pa
from bson import Decimal128, ObjectId

from lakeward.delta.read import open_dataset
from lakeward.delta.table import CURRENT_STATE_SCHEMA, TxnTable
from lakeward.reconcile.compare import Key, key_order
from lakeward.reconcile.keys import OrderKey, order_key, type_rank

__all__ = ["LakeSide", "latest_version"]

#: The rank of each canonical key type (lakeward.events.canonical_key) in MongoDB's type order.
_RANKS = {
    "number": type_rank(0),
    "string": type_rank(""),
    "dict": type_rank({}),
    "objectId": type_rank(ObjectId()),
    "bool": type_rank(True),
}
_BINARY_RANK = type_rank(b"")


def latest_version(uri: str, options: Mapping[str, str]) -> int | None:
    """The table's newest version (None: no table yet, nothing applied)."""
    table = TxnTable(uri, CURRENT_STATE_SCHEMA, options)._load()
    return None if table is None else table.version()


class LakeSide:
    """One table at one version: rows by `_id` range or by key, tombstones left out."""

    def __init__(self, uri: str, options: Mapping[str, str], version: int) -> None:
        self.uri = uri
        self.version = version
        self._dataset = open_dataset(uri, options, version)
        self._con = duckdb.connect()
        self._con.register("t", self._dataset)

    @property
    def schema(self) -> pa.Schema:
        return self._dataset.schema

    @property
    def has_hash_column(self) -> bool:
        return "_hash" in self._dataset.schema.names

    def close(self) -> None:
        self._con.close()

    def rows(
        self, lower: Any | None, upper: Any | None, columns: Sequence[str] | None = None
    ) -> Iterator[tuple[pa.Table, list[OrderKey]]]:
        """Batches of the live rows with lower <= _id < upper in MongoDB's order (None:
        unbounded), with each row's order key."""
        where, params = _prefilter(lower, upper)
        low = None if lower is None else order_key(lower)
        high = None if upper is None else order_key(upper)
        reader = self._con.execute(
            f"SELECT {_select(columns)} FROM t WHERE {where}", params
        ).fetch_record_batch(10_000)
        for batch in reader:
            table = pa.Table.from_batches([batch])
            keys = zip(
                table.column("_id").to_pylist(), table.column("_id_type").to_pylist(), strict=True
            )
            orders = [key_order(k)[0] for k in keys]
            keep = [(low is None or o >= low) and (high is None or o < high) for o in orders]
            if not all(keep):
                table = table.filter(pa.array(keep))
                orders = [o for o, k in zip(orders, keep, strict=True) if k]
            if table.num_rows:
                yield table, orders

    def rows_by_keys(self, keys: Sequence[Key], columns: Sequence[str] | None = None) -> pa.Table:
        """The live rows of exactly these keys (absent keys have none)."""
        wanted = set(keys)
        parts = []
        for start in range(0, len(keys), 1000):
            chunk = sorted({k for k, _ in keys[start : start + 1000]})
            marks = ", ".join("?" for _ in chunk)
            table = self._con.execute(
                f"SELECT {_select(columns)} FROM t WHERE _op <> 'd' AND _id IN ({marks})", chunk
            ).fetch_arrow_table()
            pairs = zip(
                table.column("_id").to_pylist(), table.column("_id_type").to_pylist(), strict=True
            )
            parts.append(table.filter(pa.array([p in wanted for p in pairs])))
        if not parts:
            return self._con.execute(
                f"SELECT {_select(columns)} FROM t LIMIT 0"
            ).fetch_arrow_table()
        return pa.concat_tables(parts)


def _select(columns: Sequence[str] | None) -> str:
    if columns is None:
        return "*"
    return ", ".join('"' + c.replace('"', '""') + '"' for c in columns)


def _prefilter(lower: Any | None, upper: Any | None) -> tuple[str, list[Any]]:
    """A SQL condition every live row in [lower, upper) meets (a superset: Python decides)."""
    clauses: list[str] = ["_op <> 'd'"]
    params: list[Any] = []
    low_rank = type_rank(lower) if lower is not None else -1
    high_rank = type_rank(upper) if upper is not None else 1 << 30
    outside = [t for t, r in _RANKS.items() if r < low_rank or r > high_rank]
    if outside:
        clauses.append(f"_id_type NOT IN ({', '.join('?' for _ in outside)})")
        params.extend(outside)
    if not low_rank <= _BINARY_RANK <= high_rank:
        clauses.append("_id_type NOT LIKE 'binary:%'")
    for bound, op in ((lower, ">="), (upper, "<")):
        if bound is None:
            continue
        if isinstance(bound, ObjectId | str) and not isinstance(bound, bool):
            kind = "objectId" if isinstance(bound, ObjectId) else "string"
            clauses.append(f"(_id_type <> ? OR _id {op} ?)")
            params.extend([kind, str(bound)])
        elif type_rank(bound) == _RANKS["number"]:
            number = float(bound.to_decimal()) if isinstance(bound, Decimal128) else float(bound)
            if math.isfinite(number):
                # Rounding to double is monotonic, so a value in range keeps its side of the
                # rounded bound (hence <= for the upper one); non-finite texts pass to Python.
                cast = "TRY_CAST(_id AS DOUBLE)"
                cmp = ">=" if op == ">=" else "<="
                clauses.append(
                    f"(_id_type <> 'number' OR {cast} IS NULL OR NOT isfinite({cast}) "
                    f"OR {cast} {cmp} ?)"
                )
                params.append(number)
    return " AND ".join(clauses), params
