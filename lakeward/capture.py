"""Capture: MongoDB changes -> Kafka, exactly once, with one of the capture strategies.

Each micro-batch of events and the checkpoint that covers it commit in one Kafka transaction:
the events to `<prefix>.<db>.<collection>` (key = canonical `_id`, so a document always lands on
one partition) and the checkpoint (a change stream's resume token, or an oplog `ts`) to the
compacted checkpoint topic `<prefix>._checkpoints` under `<pipeline>/<strategy>`. A restart reads
the last committed checkpoint (read_committed) and resumes after it, so nothing is lost and
nothing is published twice. The transactional id `lakeward-<pipeline>-<strategy>` is stable, so
a zombie attempt still running after a Temporal timeout is fenced by its successor.

An envelope too large for Kafka is not published to its data topic: a small dead-letter record
naming it goes to `<prefix>._dead_letters` in the same transaction, and capture goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from bson import json_util
from bson.json_util import CANONICAL_JSON_OPTIONS
from opentelemetry.trace import Span

from lakeward import metrics
from lakeward.events import ChangeEvent, encode_envelope
from lakeward.kafka.admin import COMPACTED, TopicSpec, ensure_topics
from lakeward.kafka.consumer import read_last_value
from lakeward.kafka.producer import OutgoingRecord, TransactionalPublisher
from lakeward.kafka.security import KafkaTarget
from lakeward.logs import Summary, redact
from lakeward.mongo.admin import enable_pre_and_post_images
from lakeward.mongo.change_stream import ChangeBatch, ChangeStreamReader
from lakeward.mongo.oplog import OplogReader
from lakeward.tracing import batch_headers, ending, start_capture_span
from workflows.spec import CaptureStrategy, FullDocument, PipelineSpec

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "Capture",
    "CaptureProgress",
    "ChangeSource",
    "SourceCapture",
    "build_capture",
    "checkpoint_topic",
    "dead_letter_topic",
    "oversize_record",
]

_log = logging.getLogger("lakeward.capture")

#: An idle stream still commits its post-batch token, but not more often than this.
IDLE_CHECKPOINT_INTERVAL_S = 5.0
#: librdkafka's default `message.max.bytes`, below the broker's default (1048588).
DEFAULT_MAX_MESSAGE_BYTES = 1_000_000
#: What a record costs beyond its key and value in a Kafka v2 record batch, rounded up.
_RECORD_OVERHEAD_BYTES = 128
#: Longest document key (Extended JSON) a dead-letter record carries before it is cut.
_DEAD_LETTER_KEY_CHARS = 2_000

_FULL_DOCUMENT = {
    FullDocument.update_lookup: "updateLookup",
    FullDocument.when_available: "whenAvailable",
    FullDocument.required: "required",
}


def checkpoint_topic(prefix: str) -> str:
    return f"{prefix}._checkpoints"


def dead_letter_topic(prefix: str) -> str:
    return f"{prefix}._dead_letters"


@dataclass
class CaptureProgress:
    events: int = 0
    batches: int = 0
    last_seq: str = ""
    resumed_from_checkpoint: bool = False
    #: Changes read but not published (DDL, updates of since-deleted documents), by kind.
    skipped: int = 0
    skipped_by_kind: dict[str, int] = field(default_factory=dict)
    #: Events too large to publish, sent to the dead-letter topic instead.
    dead_letters: int = 0
    #: Updates published with a looked-up document because the exact image was missing.
    lookup_fallbacks: int = 0


OnBatch = Callable[[CaptureProgress], Awaitable[None] | None]


class Capture(Protocol):
    """A capture strategy: runs until should_stop() or cancellation, calling on_batch after every
    committed batch and at least every idle period (the activity heartbeats there)."""

    transactional_id: str

    async def run(
        self, on_batch: OnBatch, should_stop: Callable[[], bool] = lambda: False
    ) -> CaptureProgress: ...


class ChangeSource(Protocol):
    """Where a capture reads changes: `ChangeStreamReader` or `OplogReader`."""

    async def __aenter__(self) -> ChangeSource: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    async def next_batch(
        self, max_records: int, max_wait_s: float, idle_s: float
    ) -> ChangeBatch: ...


#: Opens a source positioned after a checkpoint (None: at the pipeline's start point).
OpenSource = Callable[[dict[str, Any] | None], ChangeSource]


def build_capture(
    spec: PipelineSpec,
    mongo_uri: str,
    bootstrap: KafkaTarget,
    topic_prefix: str,
    *,
    start_at: float | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    connect_url: str | None = None,
) -> Capture:
    """The capture for the pipeline's strategy (`source.capture`)."""
    source = spec.source
    strategy = source.capture

    async def prepare() -> None:
        if source.enable_pre_images:
            await asyncio.to_thread(
                enable_pre_and_post_images, mongo_uri, source.database, source.collections
            )

    if strategy is CaptureStrategy.debezium:
        # Imported here: lakeward.debezium imports this module (CaptureProgress).
        from lakeward.debezium import DebeziumCapture

        if connect_url is None:
            raise ValueError("capture: debezium needs connect_url (LAKEWARD_CONNECT_URL)")
        return DebeziumCapture(
            spec, mongo_uri, bootstrap, topic_prefix,
            connect_url=connect_url, start_at=start_at, prepare=prepare,
        )  # fmt: skip

    open_source: OpenSource
    if strategy is CaptureStrategy.change_stream:

        def open_source(checkpoint: dict[str, Any] | None) -> ChangeSource:
            return ChangeStreamReader(
                mongo_uri,
                source.database,
                source.collections,
                resume_token=checkpoint,
                start_at=start_at,
                full_document=_FULL_DOCUMENT[source.full_document],
                pre_images=source.pre_images,
            )

    elif strategy is CaptureStrategy.oplog:

        def open_source(checkpoint: dict[str, Any] | None) -> ChangeSource:
            return OplogReader(
                mongo_uri,
                source.database,
                source.collections,
                resume_token=checkpoint,
                start_at=start_at,
                update_mode=source.oplog_update.value,
                pre_images=source.pre_images,
            )

    else:
        raise NotImplementedError(f"capture strategy {strategy.value!r} is not implemented yet")

    return SourceCapture(
        spec,
        strategy.value,
        open_source,
        bootstrap,
        topic_prefix,
        prepare=prepare,
        max_message_bytes=max_message_bytes,
        source=redact(mongo_uri),
    )


class SourceCapture:
    """Runs one capture strategy for one pipeline until asked to stop.

    The strategy only decides where changes come from (`open_source`); batching into Kafka
    transactions, checkpoints, fencing and dead letters are the same for every strategy.
    """

    def __init__(
        self,
        spec: PipelineSpec,
        strategy: str,
        open_source: OpenSource,
        bootstrap: KafkaTarget,
        topic_prefix: str,
        *,
        prepare: Callable[[], Awaitable[None]] | None = None,
        partitions: int = 3,
        idle_s: float = 1.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        source: str = "",
    ) -> None:
        self.spec = spec
        self.source = source  # where changes come from, for logs: no password
        self.strategy = strategy
        self._open_source = open_source
        self._prepare = prepare
        self._bootstrap = bootstrap
        self._prefix = topic_prefix
        self._partitions = partitions
        self._idle_s = idle_s
        self._max_message_bytes = max_message_bytes
        # Unchanged for change_stream since the first slice: existing pipelines keep their
        # checkpoints and transactional ids.
        self.checkpoint_key = f"{spec.name}/{strategy}".encode()
        self.transactional_id = f"lakeward-{spec.name}-{strategy}"

    def topics(self) -> dict[str, str]:
        return {c: self.spec.topic(self._prefix, c) for c in self.spec.source.collections}

    async def run(
        self, on_batch: OnBatch, should_stop: Callable[[], bool] = lambda: False
    ) -> CaptureProgress:
        topics = self.topics()
        ckpt_topic = checkpoint_topic(self._prefix)
        # Fence first, then read: once init_transactions returns, an older attempt can commit no
        # further checkpoint, so the one read below is the last there will be.
        publisher, _ = await asyncio.gather(
            asyncio.to_thread(
                TransactionalPublisher,
                self._bootstrap,
                self.transactional_id,
                message_max_bytes=max(self._max_message_bytes, DEFAULT_MAX_MESSAGE_BYTES),
            ),
            asyncio.to_thread(self._ensure_topics, list(topics.values()), ckpt_topic),
        )
        try:
            if self._prepare is not None:
                await self._prepare()
            raw = await asyncio.to_thread(
                read_last_value, self._bootstrap, ckpt_topic, self.checkpoint_key
            )
            token = json_util.loads(raw) if raw else None
            progress = CaptureProgress(resumed_from_checkpoint=token is not None)
            _log.info(
                "capture started",
                extra={
                    "strategy": self.strategy,
                    "source": self.source,
                    "resumed_from_checkpoint": token is not None,
                },
            )
            async with self._open_source(token) as reader:
                pump = _Pump(self, reader, publisher, token, progress, on_batch)
                await pump.run(should_stop)
        finally:
            await asyncio.to_thread(publisher.close)
        return progress

    async def reset_checkpoint(self) -> None:
        """Forget the committed checkpoint (a tombstone under its key), fencing older attempts.

        The next run starts at the pipeline's start point (`start_at`) instead: what a
        re-snapshot after HistoryLostError needs, with start_at = the new snapshot's start.
        """
        ckpt_topic = checkpoint_topic(self._prefix)
        await asyncio.to_thread(self._ensure_topics, list(self.topics().values()), ckpt_topic)
        publisher = await asyncio.to_thread(
            TransactionalPublisher, self._bootstrap, self.transactional_id
        )
        tombstone = OutgoingRecord(topic=ckpt_topic, key=self.checkpoint_key, value=None)
        try:
            await asyncio.to_thread(publisher.publish, [], tombstone)
        finally:
            await asyncio.to_thread(publisher.close)

    def _records(
        self,
        events: list[ChangeEvent],
        topics: dict[str, str],
        headers: tuple[tuple[str, bytes], ...] = (),
    ) -> tuple[list[OutgoingRecord], int]:
        """The batch's records; an envelope too large for Kafka becomes a dead-letter record.
        `headers` (the batch's trace context) go on every record."""
        now_ms = int(time.time() * 1000)
        records: list[OutgoingRecord] = []
        dead = 0
        for event in events:
            topic = topics[event.collection]
            value = encode_envelope(event, self.spec.name, now_ms)
            size = len(event.kafka_key) + len(value) + _RECORD_OVERHEAD_BYTES
            if size <= self._max_message_bytes:
                records.append(OutgoingRecord(topic, event.kafka_key, value, headers))
                continue
            dead += 1
            records.append(
                oversize_record(
                    event,
                    self.spec.name,
                    topic,
                    dead_letter_topic(self._prefix),
                    size,
                    self._max_message_bytes,
                    now_ms,
                )
            )
        return records, dead

    @staticmethod
    def _count_skipped(progress: CaptureProgress, batch: ChangeBatch) -> None:
        progress.skipped += batch.skipped
        progress.lookup_fallbacks += sum(batch.fallbacks.values())
        for kind, n in batch.counts.items():
            progress.skipped_by_kind[kind] = progress.skipped_by_kind.get(kind, 0) + n

    def _ensure_topics(self, topics: list[str], ckpt_topic: str) -> None:
        ensure_topics(
            self._bootstrap,
            [
                *(TopicSpec(topic, self._partitions) for topic in topics),
                TopicSpec(ckpt_topic, 1, COMPACTED),
                TopicSpec(dead_letter_topic(self._prefix), 1),
            ],
        )


class _Pump:
    """Reads, encodes and publishes batches, one transaction in flight at a time.

    While batch k commits (the producer waits for the broker without holding the GIL), batch
    k+1 is read and encoded; k+1 is published only once k has committed, so transactions stay in
    order, and when k fails, k+1 is never published (the next attempt reads it again).
    """

    def __init__(
        self,
        capture: SourceCapture,
        reader: ChangeSource,
        publisher: TransactionalPublisher,
        token: dict[str, Any] | None,
        progress: CaptureProgress,
        on_batch: OnBatch,
    ) -> None:
        self._capture = capture
        self._reader = reader
        self._publisher = publisher
        self._progress = progress
        self._on_batch = on_batch
        self._sent_token = token
        #: (publish, batch, dead letters, monotonic start of the publish, the batch's span)
        self._inflight: tuple[asyncio.Future[Any], ChangeBatch, int, float, Span] | None = None
        self._summary = Summary(_log, "capture progress")

    async def run(self, should_stop: Callable[[], bool]) -> None:
        capture, progress = self._capture, self._progress
        batching = capture.spec.batching
        topics = capture.topics()
        ckpt_topic = checkpoint_topic(capture._prefix)
        max_wait_s = batching.max_wait_ms / 1000
        last_commit = time.monotonic()
        try:
            while not should_stop():
                # With a commit in flight, an idle source waits no longer than a batch would, so
                # the commit is reported promptly.
                idle_s = capture._idle_s if self._inflight is None else max_wait_s
                read_at = time.time()
                batch = await self._reader.next_batch(batching.max_records, max_wait_s, idle_s)
                capture._count_skipped(progress, batch)
                idle = not batch.events
                moved = batch.resume_token != self._sent_token
                due = time.monotonic() - last_commit >= IDLE_CHECKPOINT_INTERVAL_S
                # Skipped changes (DDL) move the token too; commit it with the next batch or at
                # the idle interval.
                if idle and not (moved and due):
                    await self._settle()
                    metrics.capture_caught_up(capture.spec.name, read_at)
                    continue
                span = start_capture_span(
                    capture.spec.name, (e.collection for e in batch.events), len(batch.events)
                )
                records, dead = capture._records(batch.events, topics, batch_headers(span))
                checkpoint = OutgoingRecord(
                    topic=ckpt_topic,
                    key=capture.checkpoint_key,
                    value=json_util.dumps(
                        batch.resume_token, json_options=CANONICAL_JSON_OPTIONS
                    ).encode(),
                )
                if self._inflight is not None:
                    await self._settle()
                publish = asyncio.to_thread(self._publisher.publish, records, checkpoint)
                began = time.monotonic()
                self._inflight = (asyncio.ensure_future(publish), batch, dead, began, span)
                self._sent_token = batch.resume_token
                last_commit = time.monotonic()
            await self._settle()
        finally:
            if self._inflight is not None:
                # Leaving on an error: never close the publisher under a running commit.
                with contextlib.suppress(Exception), ending(self._inflight[4]):
                    await self._inflight[0]

    async def _settle(self) -> None:
        """Wait for the batch in flight to commit, count it, and report progress."""
        if self._inflight is not None:
            future, batch, dead, began, span = self._inflight
            self._inflight = None
            with ending(span):
                await future
            if batch.events:
                metrics.record_capture_batch(
                    self._capture.spec.name, batch.events, time.monotonic() - began
                )
            progress = self._progress
            progress.events += len(batch.events)
            progress.dead_letters += dead
            if batch.events:
                progress.batches += 1
                progress.last_seq = batch.events[-1].seq
                self._summary.add(batches=1, events=len(batch.events), dead_letters=dead)
        await _call(self._on_batch, self._progress)


def oversize_record(
    event: ChangeEvent,
    pipeline: str,
    data_topic: str,
    topic: str,
    size_bytes: int,
    limit_bytes: int,
    captured_at_ms: int,
) -> OutgoingRecord:
    """The dead-letter record standing in for an envelope too large to publish.

    Key = the event's Kafka key, so a document's dead letters share a partition and an order.
    The value names the change (pipeline, db, collection, op, seq, document key) without its
    document, so the record itself always fits.
    """
    document_key = json_util.dumps(event.document_key, json_options=CANONICAL_JSON_OPTIONS)
    truncated = len(document_key) > _DEAD_LETTER_KEY_CHARS
    value = {
        "kind": "oversize",
        "reason": f"envelope of {size_bytes} bytes exceeds max_message_bytes {limit_bytes}",
        "pipeline": pipeline,
        "db": event.database,
        "collection": event.collection,
        "topic": data_topic,
        "key": event.kafka_key.decode(),
        "document_key": document_key[:_DEAD_LETTER_KEY_CHARS],
        "document_key_truncated": truncated,
        "op": event.op,
        "seq": event.seq,
        "size_bytes": size_bytes,
        "limit_bytes": limit_bytes,
        "source_ts_ms": event.source_ts_ms,
        "captured_at_ms": captured_at_ms,
    }
    return OutgoingRecord(
        topic=topic,
        key=event.kafka_key[:_DEAD_LETTER_KEY_CHARS],
        value=orjson.dumps(value),
        headers=(("lakeward-dead-letter", b"oversize"),),
    )


async def _call(on_batch: OnBatch, progress: CaptureProgress) -> None:
    result = on_batch(progress)
    if result is not None:
        await result
