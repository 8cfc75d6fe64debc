"""Snapshot: copy a collection into its Kafka topic as `op: r` events, range by range.

The pipeline records where its stream starts (its creation time) before any range is copied, and
capture runs from there while the snapshot copies; the apply side's `seq` guard makes the overlap
correct. Each range's rows carry the `seq` of the majority commit point read just before the range
scan: every change after that point is newer than the row and wins, every change before it is
already reflected in the row. Ranges are independent: a crashed range is copied again (its rows
are idempotent under the seq guard) and finished ranges are never copied again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from bson import json_util
from bson.json_util import CANONICAL_JSON_OPTIONS

from lakeward.capture import checkpoint_topic
from lakeward.events import ChangeEvent, canonical_key, encode_envelope, make_seq
from lakeward.kafka.admin import ensure_compacted_topic, ensure_topic
from lakeward.kafka.producer import OutgoingRecord, TransactionalPublisher
from lakeward.kafka.security import KafkaTarget
from lakeward.mongo.snapshot import SnapshotReader
from lakeward.tracing import batch_headers, ending, start_capture_span
from workflows.spec import PipelineSpec

__all__ = ["CopiedRange", "KeyRange", "SnapshotCopier", "decode_bound", "encode_bound"]

#: Position of snapshot rows within their cluster time: after any change sharing that time.
_SNAPSHOT_POSITION = 0xFFFFFFFF


@dataclass(frozen=True)
class KeyRange:
    """`lower <= _id < upper` in index order; bounds as Extended JSON (None: unbounded)."""

    index: int
    lower: str | None
    upper: str | None


@dataclass(frozen=True)
class CopiedRange:
    documents: int
    #: partition -> highest offset this copy wrote: tombstones must outlive the rows up to here.
    offsets: dict[int, int]
    #: The rows' seq (the range's read point): after the snapshot, older rows are gone documents.
    seq: str = ""


def encode_bound(value: object) -> str:
    return json_util.dumps({"v": value}, json_options=CANONICAL_JSON_OPTIONS)


def decode_bound(text: str | None) -> object | None:
    return None if text is None else json_util.loads(text)["v"]


class SnapshotCopier:
    """Plans and copies the ranges of one collection of a pipeline."""

    def __init__(
        self,
        spec: PipelineSpec,
        collection: str,
        mongo_uri: str,
        bootstrap: KafkaTarget,
        topic_prefix: str,
        partitions: int = 3,
    ) -> None:
        self.spec = spec
        self.collection = collection
        self._uri = mongo_uri
        self._bootstrap = bootstrap
        self._prefix = topic_prefix
        self._partitions = partitions
        self.topic = spec.topic(topic_prefix, collection)

    async def plan(self, range_docs: int) -> list[KeyRange]:
        async with SnapshotReader(self._uri, self.spec.source.database, self.collection) as reader:
            points = await reader.split_points(range_docs)
        bounds = [None, *[encode_bound(p) for p in points], None]
        return [KeyRange(i, bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]

    async def copy(
        self,
        key_range: KeyRange,
        batch_size: int = 1000,
        on_batch: Callable[[int], None] = lambda copied: None,
    ) -> CopiedRange:
        """Publish every document of the range as `r` events."""
        await asyncio.to_thread(ensure_topic, self._bootstrap, self.topic, self._partitions)
        await asyncio.to_thread(
            ensure_compacted_topic, self._bootstrap, checkpoint_topic(self._prefix)
        )
        publisher = await asyncio.to_thread(
            TransactionalPublisher,
            self._bootstrap,
            f"lakeward-{self.spec.name}-snapshot-{self.collection}-{key_range.index}",
        )
        copied = 0
        offsets: dict[int, int] = {}
        seq = ""
        database = self.spec.source.database
        try:
            async with SnapshotReader(self._uri, database, self.collection) as reader:
                read_from = await reader.majority_time()
                seq = make_seq(read_from.time, read_from.inc, _SNAPSHOT_POSITION)
                source_ts_ms = read_from.time * 1000
                async for docs in reader.documents(
                    decode_bound(key_range.lower), decode_bound(key_range.upper), batch_size
                ):
                    now_ms = int(time.time() * 1000)
                    records = []
                    span = start_capture_span(
                        self.spec.name, [self.collection], len(docs), "snapshot batch"
                    )
                    headers = batch_headers(span)
                    for doc in docs:
                        key, key_type = canonical_key(doc["_id"])
                        event = ChangeEvent(
                            op="r", database=database, collection=self.collection, key=key,
                            key_type=key_type, seq=seq, after=doc, source_ts_ms=source_ts_ms,
                            document_key={"_id": doc["_id"]},
                        )  # fmt: skip
                        records.append(
                            OutgoingRecord(
                                self.topic,
                                event.kafka_key,
                                encode_envelope(event, self.spec.name, now_ms),
                                headers,
                            )
                        )
                    copied += len(docs)
                    progress = OutgoingRecord(
                        checkpoint_topic(self._prefix),
                        f"{self.spec.name}/snapshot/{self.collection}/{key_range.index}".encode(),
                        json_util.dumps({"copied": copied, "read_from": read_from}).encode(),
                    )
                    with ending(span):
                        written = await asyncio.to_thread(publisher.publish, records, progress)
                    for (_, partition), offset in written.items():
                        offsets[partition] = max(offsets.get(partition, -1), offset)
                    on_batch(copied)
        finally:
            await asyncio.to_thread(publisher.close)
        return CopiedRange(documents=copied, offsets=offsets, seq=seq)
