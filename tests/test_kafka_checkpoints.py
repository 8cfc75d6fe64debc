"""Reading a pipeline's checkpoint back from the compacted checkpoint topic (real Kafka)."""

from __future__ import annotations

import threading

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from lakeward.kafka.consumer import read_last_value


def _transactional(bootstrap: str, name: str) -> Producer:
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": name})
    producer.init_transactions(30)
    return producer


def test_the_last_checkpoint_is_read_while_another_transaction_stays_open(kafka, unique):
    """Other pipelines write their checkpoints to the same topic in transactions all the time;
    one left open must not keep a restarting capture from reading its own checkpoint."""
    bootstrap = kafka.kafka_bootstrap
    topic = f"ckpt-{unique}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result()

    ours = _transactional(bootstrap, f"ours-{unique}")
    for value in (b"token-1", b"token-2"):
        ours.begin_transaction()
        ours.produce(topic, key=b"pipeline-a", value=value)
        ours.commit_transaction(30)

    other = _transactional(bootstrap, f"other-{unique}")
    other.begin_transaction()
    other.produce(topic, key=b"pipeline-b", value=b"in flight")
    other.flush(30)  # written, not committed: the transaction stays open
    try:
        assert read_last_value(bootstrap, topic, b"pipeline-a", timeout_s=15) == b"token-2"
        assert read_last_value(bootstrap, topic, b"pipeline-b", timeout_s=15) is None
    finally:
        other.abort_transaction(30)


def test_the_last_checkpoint_is_read_while_others_keep_committing(kafka, unique):
    """The live end keeps moving under steady load: reading stops at the end it first saw."""
    bootstrap = kafka.kafka_bootstrap
    topic = f"ckpt-{unique}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result()
    ours = _transactional(bootstrap, f"ours-{unique}")
    ours.begin_transaction()
    ours.produce(topic, key=b"pipeline-a", value=b"token-1")
    ours.commit_transaction(30)

    stop = threading.Event()

    def others_commit() -> None:
        other = _transactional(bootstrap, f"other-{unique}")
        n = 0
        while not stop.is_set():
            other.begin_transaction()
            for _ in range(20):
                other.produce(topic, key=b"pipeline-b", value=str(n).encode())
                n += 1
            other.commit_transaction(30)

    writer = threading.Thread(target=others_commit, daemon=True)
    writer.start()
    try:
        assert read_last_value(bootstrap, topic, b"pipeline-a", timeout_s=20) == b"token-1"
    finally:
        stop.set()
        writer.join(60)
