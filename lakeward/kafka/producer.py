"""Exactly-once publishing: a batch of events and its checkpoint in one Kafka transaction."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from lakeward.kafka.security import KafkaTarget, client_config, raise_if_refused

__all__ = ["OutgoingRecord", "ProducerFencedError", "PublishError", "TransactionalPublisher"]

_log = logging.getLogger(__name__)


class PublishError(RuntimeError):
    """The transaction was aborted; nothing of it is visible. Safe to retry the batch."""


class ProducerFencedError(RuntimeError):
    """A newer attempt with the same transactional.id took over; this one must stop."""


@dataclass(frozen=True)
class OutgoingRecord:
    topic: str
    key: bytes
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


class TransactionalPublisher:
    """A transactional producer with a stable `transactional.id`.

    `init_transactions` fences any older producer with the same id (a zombie capture attempt still
    running after a Temporal timeout) and aborts its open transaction.
    """

    def __init__(
        self,
        bootstrap: KafkaTarget,
        transactional_id: str,
        timeout_s: float = 30.0,
        message_max_bytes: int = 1_000_000,
    ) -> None:
        self._timeout = timeout_s
        raise_if_refused(bootstrap)  # bad credentials: a clear error now, not a timeout
        self._producer = Producer(
            {
                **client_config(bootstrap),
                "transactional.id": transactional_id,
                "enable.idempotence": True,
                "linger.ms": 5,
                "compression.type": "lz4",
                "transaction.timeout.ms": 60_000,
                # The client's limit; the broker's and topic's max.message.bytes must allow it.
                "message.max.bytes": message_max_bytes,
                "logger": _log,
            }
        )
        try:
            self._producer.init_transactions(timeout_s)
        except KafkaException as exc:
            raise PublishError(f"init_transactions for {transactional_id!r} failed: {exc}") from exc

    def publish(
        self, records: Sequence[OutgoingRecord], checkpoint: OutgoingRecord
    ) -> dict[tuple[str, int], int]:
        """Commit records and the checkpoint atomically, or raise with nothing visible.

        Returns the highest offset written per (topic, partition) of `records`.
        """
        producer = self._producer
        written: dict[tuple[str, int], int] = {}

        def delivered(error: KafkaError | None, message: Message) -> None:
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if error is None and topic is not None and partition is not None and offset is not None:
                written[(topic, partition)] = max(written.get((topic, partition), -1), offset)

        try:
            producer.begin_transaction()
            for record in records:
                self._produce(record, delivered)
            self._produce(checkpoint, None)
            producer.commit_transaction(self._timeout)
            producer.poll(0)  # serve any delivery report not yet served by the commit's flush
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.fatal() or error.code() == KafkaError._FENCED:
                raise ProducerFencedError(f"producer fenced or fatal: {error}") from exc
            if error.txn_requires_abort():
                producer.abort_transaction(self._timeout)
                raise PublishError(f"transaction aborted: {error}") from exc
            if error.retriable():
                raise PublishError(f"commit failed, retriable: {error}") from exc
            raise
        return written

    def _produce(
        self,
        record: OutgoingRecord,
        on_delivery: Callable[[KafkaError | None, Message], None] | None,
    ) -> None:
        while True:
            try:
                self._producer.produce(
                    record.topic,
                    key=record.key,
                    value=record.value,
                    headers=list(record.headers),
                    on_delivery=on_delivery,
                )
                self._producer.poll(0)
                return
            except BufferError:
                # Local queue full: let deliveries drain before producing more.
                self._producer.poll(0.05)

    def close(self) -> None:
        self._producer.flush(self._timeout)
