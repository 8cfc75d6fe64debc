"""Capture: MongoDB change stream -> Kafka, exactly once.

Each micro-batch of events and the resume token that covers it commit in one Kafka transaction:
the events to `<prefix>.<db>.<collection>` (key = canonical `_id`, so a document always lands on
one partition) and the token to the compacted checkpoint topic `<prefix>._checkpoints`. A restart
reads the last committed token (read_committed) and resumes after it, so nothing is lost and
nothing is published twice. The transactional id is stable per pipeline, so a zombie attempt
still running after a Temporal timeout is fenced by its successor.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from bson import json_util
from bson.json_util import CANONICAL_JSON_OPTIONS

from lakeward.events import encode_envelope
from lakeward.kafka.admin import ensure_topic
from lakeward.kafka.consumer import read_last_value
from lakeward.kafka.producer import OutgoingRecord, TransactionalPublisher
from lakeward.mongo.change_stream import ChangeStreamReader
from lakeward.spec import CaptureStrategy, PipelineSpec

__all__ = [
    "Capture",
    "CaptureProgress",
    "ChangeStreamCapture",
    "build_capture",
    "checkpoint_topic",
]

#: An idle stream still commits its post-batch token, but not more often than this.
IDLE_CHECKPOINT_INTERVAL_S = 5.0


def checkpoint_topic(prefix: str) -> str:
    return f"{prefix}._checkpoints"


@dataclass
class CaptureProgress:
    events: int = 0
    batches: int = 0
    last_seq: str = ""
    resumed_from_checkpoint: bool = False


OnBatch = Callable[[CaptureProgress], Awaitable[None] | None]


class Capture(Protocol):
    """A capture strategy: runs until should_stop() or cancellation, calling on_batch after every
    committed batch and at least every idle period (the activity heartbeats there)."""

    transactional_id: str

    async def run(
        self, on_batch: OnBatch, should_stop: Callable[[], bool] = lambda: False
    ) -> CaptureProgress: ...


def build_capture(
    spec: PipelineSpec,
    mongo_uri: str,
    bootstrap: str,
    topic_prefix: str,
    *,
    start_at: float | None = None,
) -> Capture:
    """The capture for the pipeline's strategy (`source.capture`)."""
    strategy = spec.source.capture
    if strategy is CaptureStrategy.change_stream:
        return ChangeStreamCapture(spec, mongo_uri, bootstrap, topic_prefix, start_at=start_at)
    raise NotImplementedError(f"capture strategy {strategy.value!r} is not implemented yet")


class ChangeStreamCapture:
    """Runs the change-stream strategy for one pipeline until asked to stop."""

    def __init__(
        self,
        spec: PipelineSpec,
        mongo_uri: str,
        bootstrap: str,
        topic_prefix: str,
        partitions: int = 3,
        idle_s: float = 1.0,
        start_at: float | None = None,
    ) -> None:
        self.spec = spec
        self._mongo_uri = mongo_uri
        self._bootstrap = bootstrap
        self._prefix = topic_prefix
        self._partitions = partitions
        self._idle_s = idle_s
        self._start_at = start_at
        self._checkpoint_key = f"{spec.name}/change_stream".encode()
        self.transactional_id = f"lakeward-{spec.name}-change_stream"

    def topics(self) -> dict[str, str]:
        return {c: self.spec.topic(self._prefix, c) for c in self.spec.source.collections}

    async def run(
        self, on_batch: OnBatch, should_stop: Callable[[], bool] = lambda: False
    ) -> CaptureProgress:
        topics = self.topics()
        ckpt_topic = checkpoint_topic(self._prefix)
        await asyncio.to_thread(self._ensure_topics, list(topics.values()), ckpt_topic)
        raw = await asyncio.to_thread(
            read_last_value, self._bootstrap, ckpt_topic, self._checkpoint_key
        )
        token = json_util.loads(raw) if raw else None
        progress = CaptureProgress(resumed_from_checkpoint=token is not None)
        publisher = await asyncio.to_thread(
            TransactionalPublisher, self._bootstrap, self.transactional_id
        )
        batching = self.spec.batching
        last_commit = time.monotonic()
        committed_token = token
        try:
            async with ChangeStreamReader(
                self._mongo_uri,
                self.spec.source.database,
                self.spec.source.collections,
                resume_token=token,
                start_at=None if token else self._start_at,
            ) as reader:
                while not should_stop():
                    batch = await reader.next_batch(
                        batching.max_records, batching.max_wait_ms / 1000, self._idle_s
                    )
                    idle = not batch.events
                    moved = batch.resume_token != committed_token
                    due = time.monotonic() - last_commit >= IDLE_CHECKPOINT_INTERVAL_S
                    if idle and not (moved and due):
                        result = on_batch(progress)
                        if result is not None:
                            await result
                        continue
                    now_ms = int(time.time() * 1000)
                    records = [
                        OutgoingRecord(
                            topic=topics[e.collection],
                            key=e.kafka_key,
                            value=encode_envelope(e, self.spec.name, now_ms),
                        )
                        for e in batch.events
                    ]
                    checkpoint = OutgoingRecord(
                        topic=ckpt_topic,
                        key=self._checkpoint_key,
                        value=json_util.dumps(
                            batch.resume_token, json_options=CANONICAL_JSON_OPTIONS
                        ).encode(),
                    )
                    await asyncio.to_thread(publisher.publish, records, checkpoint)
                    committed_token = batch.resume_token
                    last_commit = time.monotonic()
                    progress.events += len(batch.events)
                    progress.batches += 1 if batch.events else 0
                    if batch.events:
                        progress.last_seq = batch.events[-1].seq
                    result = on_batch(progress)
                    if result is not None:
                        await result
        finally:
            await asyncio.to_thread(publisher.close)
        return progress

    def _ensure_topics(self, topics: list[str], ckpt_topic: str) -> None:
        for topic in topics:
            ensure_topic(self._bootstrap, topic, partitions=self._partitions)
        ensure_topic(
            self._bootstrap,
            ckpt_topic,
            partitions=1,
            config={"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"},
        )
