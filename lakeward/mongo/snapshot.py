"""Reading a collection for a snapshot: split points over `_id` and range scans in key order.

Ranges use `min()`/`max()` with the `_id` index hint rather than `$gte`/`$lt` filters: a filter
on `_id` only matches values of the bound's BSON type (type bracketing), while index bounds follow
MongoDB's cross-type key order, so ranges of a collection with mixed `_id` types cover every
document exactly once.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from typing import Any, TypeVar, cast

from bson import Timestamp
from pymongo import AsyncMongoClient, ReadPreference
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.cursor import AsyncCursor
from pymongo.read_concern import ReadConcern

from lakeward.mongo.clients import async_client
from lakeward.mongo.errors import is_unavailable
from lakeward.mongo.tls import explained_tls_failures
from lakeward.resilience import Dependency, retry_call_async

__all__ = ["SnapshotReader"]

#: Sampled ids per range: more gives more even ranges at the price of a larger sample.
_SAMPLES_PER_RANGE = 20


class SnapshotReader:
    """Plans split points of one collection and reads its `_id` ranges with majority reads."""

    def __init__(self, uri: str, database: str, collection: str) -> None:
        self._uri, self._database, self._collection = uri, database, collection
        self._exit = contextlib.AsyncExitStack()

    async def __aenter__(self) -> SnapshotReader:
        # The worker's shared client (and its pool) when there is one, else one of our own.
        client = await self._exit.enter_async_context(async_client(self._uri, tz_aware=True))
        self._client: AsyncMongoClient[dict[str, Any]] = client
        self._coll: AsyncCollection[dict[str, Any]] = client[self._database].get_collection(
            self._collection,
            read_concern=ReadConcern("majority"),
            read_preference=ReadPreference.PRIMARY,
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._exit.aclose()

    async def split_points(self, range_docs: int) -> list[Any]:
        """Ascending `_id` split points cutting the collection into ranges of about range_docs.

        Estimated from a `$sample` sorted by the server (BSON order across types), so planning a
        collection of hundreds of millions of documents reads a few thousand ids, not all of them.
        """
        with explained_tls_failures(self._uri):
            count = await self._coll.estimated_document_count()
        ranges = max(1, math.ceil(count / range_docs))
        if ranges == 1:
            return []
        size = min(count, ranges * _SAMPLES_PER_RANGE)
        cursor = await self._coll.aggregate(
            [{"$sample": {"size": size}}, {"$project": {"_id": 1}}, {"$sort": {"_id": 1}}]
        )
        ids = [doc["_id"] async for doc in cursor]
        step = len(ids) / ranges
        points: list[Any] = []
        for point in (ids[int(step * i)] for i in range(1, ranges)):
            # A small sample can repeat a boundary; a repeated point would make an empty range.
            if not points or points[-1] != point:
                points.append(point)
        return points

    async def majority_time(self) -> Timestamp:
        """The majority commit point now: a later majority read reflects at least this time."""
        # A command, so pymongo's retryable reads do not cover it: retried here across a
        # failover (a stepdown leaves no primary for a few seconds).
        with explained_tls_failures(self._uri):
            hello = await retry_call_async(
                lambda: self._client.admin.command("hello"),
                dependency=Dependency.MONGODB,
                is_transient=is_unavailable,
            )
        ts: Timestamp = hello["lastWrite"]["majorityOpTime"]["ts"]
        return ts

    async def documents(
        self, lower: Any | None, upper: Any | None, batch_size: int = 1000
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Batches of the documents with lower <= _id < upper (None: unbounded)."""
        cursor = _bounded(self._coll.find({}, batch_size=batch_size), lower, upper)
        batch: list[dict[str, Any]] = []
        async for doc in cursor:
            batch.append(doc)
            if len(batch) >= batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    async def raw_batches(
        self, lower: Any | None, upper: Any | None, batch_size: int = 10_000
    ) -> AsyncIterator[bytes]:
        """The same range as `documents`, as the server's raw batches (concatenated BSON
        documents, not decoded)."""
        cursor = _bounded(self._coll.find_raw_batches({}, batch_size=batch_size), lower, upper)
        async for batch in cursor:
            yield cast(bytes, batch)  # a raw batch cursor yields bytes, typed as documents


_Cursor = TypeVar("_Cursor", bound=AsyncCursor[Any])


def _bounded(cursor: _Cursor, lower: Any | None, upper: Any | None) -> _Cursor:
    """`cursor` over lower <= _id < upper by the `_id` index's own bounds (None: unbounded)."""
    cursor = cursor.hint([("_id", 1)])
    if lower is not None:
        cursor = cursor.min([("_id", lower)])
    if upper is not None:
        cursor = cursor.max([("_id", upper)])
    return cursor
