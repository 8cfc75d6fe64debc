"""Reading committed records from explicit offsets (the Delta log, not the group, owns offsets)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from lakeward.kafka.security import KafkaTarget, client_config, raise_if_refused
from lakeward.resilience import Dependency, RetryPolicy, retry_call

__all__ = ["ConsumedRecord", "KafkaReadError", "PartitionReader", "read_last_value"]

_log = logging.getLogger(__name__)


class KafkaReadError(RuntimeError):
    """Consuming failed; transient unless the message says otherwise."""


@dataclass(frozen=True)
class ConsumedRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    #: The record's Kafka headers (a capture batch's trace context among them).
    headers: tuple[tuple[str, bytes], ...] = ()


def _headers(raw: object) -> tuple[tuple[str, bytes], ...]:
    """confluent-kafka's headers (a list of pairs, None without any) as bytes-valued pairs."""
    if not isinstance(raw, list):
        return ()
    return tuple((k, v) for k, v in raw if isinstance(v, bytes))


def _consumer(bootstrap: KafkaTarget, **extra: object) -> Consumer:
    return Consumer(
        {
            **client_config(bootstrap),
            # Required by librdkafka even with manual assignment; offsets are never committed.
            "group.id": "lakeward-apply",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "logger": _log,
            **extra,
        }
    )


class PartitionReader:
    """A warm consumer for one topic, positioned explicitly before every batch.

    Kept per worker and reused across micro-batches; `read_batch` only re-seeks when the wanted
    start offsets differ from where the previous batch left off.
    """

    def __init__(self, bootstrap: KafkaTarget, topic: str) -> None:
        self.topic = topic
        raise_if_refused(bootstrap)  # bad credentials: a clear error now, not empty batches
        self._consumer = _consumer(bootstrap, **{"fetch.wait.max.ms": 20})
        self._next: dict[int, int] = {}

    def partitions(self, timeout_s: float = 10.0) -> list[int]:
        """The topic's partitions; empty while capture has not created the topic yet.

        A metadata read: retried (bounded, with jitter) when a broker does not answer."""
        from lakeward.kafka.errors import is_unavailable  # it imports this module

        metadata = retry_call(
            lambda: self._consumer.list_topics(self.topic, timeout=timeout_s),
            dependency=Dependency.KAFKA,
            is_transient=is_unavailable,
            policy=RetryPolicy(attempts=3, total_s=timeout_s),
        )
        topic = metadata.topics.get(self.topic)
        if topic is None:
            return []
        if topic.error is not None:
            if topic.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                return []
            raise KafkaReadError(f"topic {self.topic!r} is not available: {topic.error}")
        return sorted(topic.partitions)

    def read_batch(
        self, start: dict[int, int | None], max_records: int, max_wait_s: float, idle_s: float
    ) -> list[ConsumedRecord]:
        """Committed records from `start` (partition -> first offset, None = beginning).

        Returns when max_records are read or max_wait_s after the first record; waits at most
        idle_s for the first one.
        """
        wanted = {p: (OFFSET_BEGINNING if o is None else o) for p, o in start.items()}
        if wanted != self._next:
            self._consumer.assign([TopicPartition(self.topic, p, o) for p, o in wanted.items()])
            self._next = dict(wanted)
        records: list[ConsumedRecord] = []
        began = time.monotonic()
        first_at: float | None = None
        while len(records) < max_records:
            now = time.monotonic()
            deadline = (first_at + max_wait_s) if first_at is not None else (began + idle_s)
            if now >= deadline:
                break
            messages = self._consumer.consume(
                num_messages=max_records - len(records), timeout=min(deadline - now, 0.05)
            )
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaReadError(f"consuming {self.topic}: {error}")
                _, ts = message.timestamp()
                partition, offset = message.partition(), message.offset()
                assert partition is not None and offset is not None  # set on consumed messages
                records.append(
                    ConsumedRecord(
                        topic=self.topic,
                        partition=partition,
                        offset=offset,
                        key=message.key(),
                        value=message.value(),
                        timestamp_ms=ts,
                        headers=_headers(message.headers()),
                    )
                )
                self._next[partition] = offset + 1
            if records and first_at is None:
                first_at = time.monotonic()
        return records

    def backlog(self, timeout_s: float = 2.0) -> int:
        """Records past where the last batch stopped, over the partitions it read (an estimate:
        the high watermark also counts transaction markers and aborted records)."""
        return sum(self.backlog_by_partition(timeout_s).values())

    def backlog_by_partition(self, timeout_s: float = 2.0) -> dict[int, int]:
        """`backlog`, partition by partition."""
        deadline = time.monotonic() + timeout_s
        backlog: dict[int, int] = {}
        for partition, position in self._next.items():
            low, high = _watermarks(self._consumer, TopicPartition(self.topic, partition), deadline)
            start = low if position == OFFSET_BEGINNING else max(position, low)
            backlog[partition] = max(high - start, 0)
        return backlog

    def close(self) -> None:
        self._consumer.close()


def read_last_value(
    bootstrap: KafkaTarget, topic: str, key: bytes, timeout_s: float = 30.0
) -> bytes | None:
    """The newest committed value for `key` in a (compacted) topic, or None if it has none."""
    consumer = _consumer(bootstrap, **{"enable.partition.eof": True, "group.id": "lakeward-ckpt"})
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s)
        if topic not in metadata.topics or metadata.topics[topic].error is not None:
            return None
        partitions = sorted(metadata.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        pending = set(partitions)
        deadline = time.monotonic() + timeout_s
        #: Read up to the end as it was when we looked, not "the end": with other pipelines'
        #: transactions writing checkpoints all the time, a read_committed consumer may never
        #: find a moment with no transaction open, so the live end is never reached.
        ends: dict[int, int] = {}
        for p in partitions:
            low, high = _watermarks(consumer, TopicPartition(topic, p), deadline)
            ends[p] = high
            if high <= low:
                pending.discard(p)
        value: bytes | None = None
        while pending:
            if time.monotonic() > deadline:
                raise KafkaReadError(f"timed out reading checkpoints from {topic!r}")
            message = consumer.poll(0.2)
            if message is not None:
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise KafkaReadError(f"reading {topic}: {error}")
                    pending.discard(message.partition())
                    continue
                if message.key() == key:
                    value = message.value()
            # Past the end we saw (control records and aborted data included): done.
            for tp in consumer.position([TopicPartition(topic, p) for p in pending]):
                if tp.offset >= ends[tp.partition]:
                    pending.discard(tp.partition)
        return value
    except KafkaException as exc:
        raise KafkaReadError(f"reading {topic}: {exc}") from exc
    finally:
        consumer.close()


#: Errors of a partition whose leadership is still settling (a topic created a moment ago).
_SETTLING = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
}


def _watermarks(consumer: Consumer, partition: TopicPartition, deadline: float) -> tuple[int, int]:
    """A partition's (low, high) offsets, retried while its leadership settles."""
    while True:
        try:
            low, high = consumer.get_watermark_offsets(
                partition, timeout=max(deadline - time.monotonic(), 0.1)
            )
            return int(low), int(high)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.code() not in _SETTLING or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
