"""The MongoDB side of a reconciliation: leaf ranges in `_id` index order, and documents by key.

Reads use readConcern majority on the primary, like the snapshot's; the caller records the
majority commit point before and after each read (`majority_time`), which is what the lake must
have applied past before a difference counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lakeward.mongo.snapshot import SnapshotReader

__all__ = ["SourceReader"]


class SourceReader(SnapshotReader):
    """`SnapshotReader` (split points, majority time, range scans) plus lookups by `_id`."""

    async def __aenter__(self) -> SourceReader:
        await super().__aenter__()  # takes its client (the worker's shared one, if any)
        return self

    async def estimated_count(self) -> int:
        return int(await self._coll.estimated_document_count())

    async def documents_by_ids(
        self, ids: Sequence[Any], batch_size: int = 1000
    ) -> list[dict[str, Any]]:
        """The documents whose `_id` is one of `ids` (those that exist)."""
        found: list[dict[str, Any]] = []
        for start in range(0, len(ids), batch_size):
            chunk = list(ids[start : start + batch_size])
            cursor = self._coll.find({"_id": {"$in": chunk}}, batch_size=batch_size)
            found.extend([doc async for doc in cursor])
        return found
