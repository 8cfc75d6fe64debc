"""The lake side of a reconciliation: a current-state table at one pinned version, read by range.

The table is opened as deltalake's Arrow dataset at the pinned version (local disk and object
stores alike, lakeward.delta.read) and scanned file by file with the projection and a range
prefilter pushed into the Parquet reader (row groups outside it are skipped by their statistics).
The prefilter narrows rows by `_id_type` and, where the canonical text sorts as MongoDB does
(ObjectIds, strings), by `_id`; the exact range test is then `order_key` in Python, the same one
the source side uses. Number keys have no text order to prefilter on: every range reads all the
number rows (a known cost, docs/reconcile.md).
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from bson import ObjectId

from lakeward.delta.read import open_dataset
from lakeward.delta.table import CURRENT_STATE_SCHEMA, TxnTable
from lakeward.reconcile.compare import Key, key_order
from lakeward.reconcile.keys import OrderKey, order_key, type_rank

__all__ = ["LakeSide", "latest_version", "open_lake"]

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


def open_lake(uri: str, options: Mapping[str, str], version: int) -> LakeSide:
    """The table at a pinned version, shared: a version never changes, and opening one reads
    its log (about 50 ms), which every range of a run would otherwise repeat."""
    return _open_lake(uri, tuple(sorted(options.items())), version)


@functools.lru_cache(maxsize=8)
def _open_lake(uri: str, options: tuple[tuple[str, str], ...], version: int) -> LakeSide:
    return LakeSide(uri, dict(options), version)


class LakeSide:
    """One table at one version: rows by `_id` range or by key, tombstones left out."""

    def __init__(self, uri: str, options: Mapping[str, str], version: int) -> None:
        self.uri = uri
        self.version = version
        self._dataset = open_dataset(uri, options, version)

    @property
    def schema(self) -> pa.Schema:
        return self._dataset.schema

    @property
    def has_hash_column(self) -> bool:
        return "_hash" in self._dataset.schema.names

    def live_rows_without_hash(self) -> int:
        """Live rows whose `_hash` is null (written before apply wrote one)."""
        return sum(t.column("_hash").null_count for t in self._scan(["_hash"], _live))

    def close(self) -> None:
        """Nothing to release (kept so callers need not know)."""

    def rows(
        self, lower: Any | None, upper: Any | None, columns: Sequence[str] | None = None
    ) -> Iterator[tuple[pa.Table, list[OrderKey]]]:
        """Tables of the live rows with lower <= _id < upper in MongoDB's order (None:
        unbounded), with each row's order key."""
        low = None if lower is None else order_key(lower)
        high = None if upper is None else order_key(upper)
        keep_group = _range_may_hold(lower, upper)
        for table in self._scan(columns, lambda lit: _prefilter(lower, upper, lit), keep_group):
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
        texts = sorted({k for k, _ in keys})
        parts = [
            table.filter(
                pa.array(
                    [
                        p in wanted
                        for p in zip(
                            table.column("_id").to_pylist(),
                            table.column("_id_type").to_pylist(),
                            strict=True,
                        )
                    ],
                    pa.bool_(),
                )
            )
            for table in self._scan(
                # is_in has no string_view kernel: compare the keys as plain strings.
                columns,
                lambda lit: (
                    _live(lit)
                    & pc.field("_id").cast(pa.string()).isin(pa.array(texts, pa.string()))
                ),
                keep_group=lambda stats: _keys_may_be_in(texts, stats),
            )
        ]
        names = list(columns) if columns is not None else self._dataset.schema.names
        if not parts:
            return self._dataset.schema.empty_table().select(names)
        return pa.concat_tables(parts)

    def _scan(
        self,
        columns: Sequence[str] | None,
        where: Callable[[Literal], pc.Expression],
        keep_group: Callable[[Mapping[str, Any]], bool] = lambda stats: True,
    ) -> Iterator[pa.Table]:
        """Each data file's matching rows, in the table's schema.

        The filter runs on the rows read, not inside the Parquet reader: delta-rs writes strings
        as `string_view` in MERGE-rewritten files and as `string` elsewhere, and pyarrow 26
        binds no comparison between the two (nor `is_in` on views), so a pushed-down filter
        fails on a mixed table. Each file is read with its own physical types, then cast.
        Row groups are skipped by their `_id`/`_id_type` statistics (`keep_group`), which is
        what keeps a range read from reading the whole table.
        """
        schema = self._dataset.schema
        wanted = list(columns) if columns is not None else schema.names
        # The filter's own columns are read too, and dropped after it.
        read = [*wanted, *(n for n in ("_id", "_id_type", "_op") if n not in wanted)]
        target = pa.schema([schema.field(n) for n in read])
        condition = where(lambda column, value: pa.scalar(value, schema.field(column).type))
        for fragment in self._dataset.get_fragments():
            physical = fragment.physical_schema
            present = [n for n in read if n in physical.names]
            fragment.ensure_complete_metadata()
            groups = [g.id for g in fragment.row_groups if keep_group(g.statistics or {})]
            if not groups:
                continue
            if len(groups) < len(fragment.row_groups):
                fragment = fragment.subset(row_group_ids=groups)
            for batch in fragment.to_batches(schema=physical, columns=present):
                if batch.num_rows == 0:
                    continue
                table = pa.Table.from_arrays(
                    [
                        batch.column(f.name).cast(f.type)
                        if f.name in present
                        else pa.nulls(batch.num_rows, f.type)
                        for f in target
                    ],
                    schema=target,
                ).filter(condition)
                if table.num_rows:
                    yield table.select(wanted)


#: Builds a literal of a column's type.
Literal = Callable[[str, Any], Any]


def _live(lit: Literal) -> pc.Expression:
    return pc.field("_op") != lit("_op", "d")


def _prefilter(lower: Any | None, upper: Any | None, lit: Literal) -> pc.Expression:
    """A filter every live row in [lower, upper) passes (a superset: Python decides)."""
    where = _live(lit)
    low_rank = type_rank(lower) if lower is not None else -1
    high_rank = type_rank(upper) if upper is not None else 1 << 30
    outside = [t for t, r in _RANKS.items() if r < low_rank or r > high_rank]
    if outside:
        where &= ~pc.field("_id_type").cast(pa.string()).isin(pa.array(outside, pa.string()))
    if not low_rank <= _BINARY_RANK <= high_rank:
        where &= ~pc.starts_with(pc.field("_id_type"), "binary:")
    for bound, above in ((lower, True), (upper, False)):
        if isinstance(bound, ObjectId | str):
            # Their canonical texts sort as MongoDB sorts them (hex digits; UTF-8 bytes).
            kind = "objectId" if isinstance(bound, ObjectId) else "string"
            text = lit("_id", str(bound))
            inside = pc.field("_id") >= text if above else pc.field("_id") < text
            where &= (pc.field("_id_type") != lit("_id_type", kind)) | inside
    return where


def _id_stats(stats: Mapping[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(the row group's single `_id_type` or None, `_id` min, `_id` max)."""
    types, ids = stats.get("_id_type") or {}, stats.get("_id") or {}
    single = types.get("min") if types.get("min") == types.get("max") else None
    return single, ids.get("min"), ids.get("max")


def _range_may_hold(lower: Any | None, upper: Any | None) -> Callable[[Mapping[str, Any]], bool]:
    """Whether a row group (by its statistics) may hold a key of [lower, upper)."""
    low_rank = type_rank(lower) if lower is not None else -1
    high_rank = type_rank(upper) if upper is not None else 1 << 30

    def may_hold(stats: Mapping[str, Any]) -> bool:
        single, low, high = _id_stats(stats)
        if single is None or low is None or high is None:
            return True
        rank = _BINARY_RANK if single.startswith("binary:") else _RANKS.get(single)
        if rank is None:
            return True
        if not low_rank <= rank <= high_rank:
            return False
        kind = {"objectId": ObjectId, "string": str}.get(single)
        if kind is None:
            return True
        if isinstance(lower, kind) and rank == low_rank and high < str(lower):
            return False
        return not (isinstance(upper, kind) and rank == high_rank and low >= str(upper))

    return may_hold


def _keys_may_be_in(texts: Sequence[str], stats: Mapping[str, Any]) -> bool:
    """Whether a row group may hold one of the (sorted) key texts."""
    _, low, high = _id_stats(stats)
    if low is None or high is None:
        return True
    at = bisect.bisect_left(texts, low)
    return at < len(texts) and texts[at] <= high
