"""Administrative calls to a Kafka cluster: readiness and topic creation."""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from lakeward.kafka.security import KafkaTarget, bootstrap_of, client_config, raise_if_refused

__all__ = ["TopicSpec", "ensure_compacted_topic", "ensure_topic", "ensure_topics", "is_ready"]

_log = logging.getLogger(__name__)


def is_ready(bootstrap: KafkaTarget, timeout: float = 2.0) -> bool:
    """True when the cluster answers a metadata request with at least one broker."""
    host, _, port = bootstrap_of(bootstrap).split(",")[0].rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError:
        return False
    admin = AdminClient(
        {
            **client_config(bootstrap),
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


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 1
    config: dict[str, str] = field(default_factory=dict)


def ensure_topics(bootstrap: KafkaTarget, topics: list[TopicSpec], timeout: float = 30.0) -> None:
    """Create the topics that do not exist, in one request (replication factor: the broker's
    default, 1 on the single local broker)."""
    raise_if_refused(bootstrap)  # bad credentials: a clear error now, not a timeout
    admin = AdminClient(client_config(bootstrap))
    existing = admin.list_topics(timeout=timeout).topics
    missing = [t for t in topics if t.name not in existing]
    if not missing:
        return
    futures = admin.create_topics(
        [NewTopic(t.name, num_partitions=t.partitions, replication_factor=-1, config=t.config)
         for t in missing],
        operation_timeout=timeout,
    )  # fmt: skip
    for future in futures.values():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise
    # Created is not yet usable: a client reading a partition before its leader is elected gets
    # NOT_LEADER_FOR_PARTITION. Wait until every new partition has a leader.
    names = [t.name for t in missing]
    deadline = time.monotonic() + timeout
    while not _have_leaders(admin, names):
        if time.monotonic() > deadline:
            raise KafkaException(f"topics {names} have no partition leaders after {timeout}s")
        time.sleep(0.05)


def _have_leaders(admin: AdminClient, names: list[str]) -> bool:
    topics = admin.list_topics(timeout=10).topics
    for name in names:
        topic = topics.get(name)
        if topic is None or topic.error is not None or not topic.partitions:
            return False
        if any(p.leader < 0 or p.error is not None for p in topic.partitions.values()):
            return False
    return True


def ensure_topic(
    bootstrap: KafkaTarget,
    topic: str,
    partitions: int = 1,
    config: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> None:
    """Create the topic unless it exists."""
    ensure_topics(bootstrap, [TopicSpec(topic, partitions, config or {})], timeout)


#: Topic config of checkpoint topics: only the newest value per key matters.
COMPACTED = {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}


def ensure_compacted_topic(bootstrap: KafkaTarget, topic: str) -> None:
    """A one-partition compacted topic for checkpoints: only the newest value per key matters."""
    ensure_topic(bootstrap, topic, partitions=1, config=COMPACTED)
