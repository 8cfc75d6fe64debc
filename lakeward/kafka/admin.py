"""Administrative calls to a Kafka cluster: readiness and topic creation."""

from __future__ import annotations

import logging
import socket

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

__all__ = ["ensure_topic", "is_ready"]

_log = logging.getLogger(__name__)


def is_ready(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when the cluster answers a metadata request with at least one broker."""
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError:
        return False
    admin = AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "socket.timeout.ms": int(timeout * 1000),
            # librdkafka prints every refused connection to stderr; send it to logging instead.
            "logger": _log,  # type: ignore[dict-item]  # the client accepts a Logger here
        }
    )
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException:
        return False
    return bool(metadata.brokers)


def ensure_topic(
    bootstrap: str,
    topic: str,
    partitions: int = 1,
    config: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> None:
    """Create the topic unless it exists (replication factor 1 suits the single local broker)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    if topic in admin.list_topics(timeout=timeout).topics:
        return
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=-1, config=config or {})],
        operation_timeout=timeout,
    )
    try:
        futures[topic].result(timeout)
    except KafkaException as exc:
        if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
            raise


def ensure_compacted_topic(bootstrap: str, topic: str) -> None:
    """A one-partition compacted topic for checkpoints: only the newest value per key matters."""
    ensure_topic(
        bootstrap,
        topic,
        partitions=1,
        config={"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"},
    )
