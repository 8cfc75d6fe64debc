"""Each core server of the local stack answers a real round trip."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

from confluent_kafka import Consumer, Producer
from pymongo import MongoClient
from temporalio.client import Client
from temporalio.worker import Worker

from lakeward.kafka.admin import ensure_topic
from tests.roundtrip_workflow import ShoutWorkflow, shout


def test_mongo_change_stream_sees_an_insert(mongo, unique) -> None:
    with MongoClient(mongo.mongo_uri) as client:
        collection = client[f"rt_{unique}"].docs
        with collection.watch(max_await_time_ms=500) as stream:
            collection.insert_one({"_id": 1, "hello": "world"})
            change = None
            for _ in range(20):
                change = stream.try_next()
                if change is not None:
                    break
    assert change is not None
    assert change["operationType"] == "insert"
    assert change["fullDocument"] == {"_id": 1, "hello": "world"}


def test_kafka_transactional_produce_and_read_committed_consume(kafka, unique) -> None:
    topic = f"rt-{unique}"
    ensure_topic(kafka.kafka_bootstrap, topic)
    producer = Producer(
        {"bootstrap.servers": kafka.kafka_bootstrap, "transactional.id": f"rt-{unique}"}
    )
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"aborted", value=b"never visible")
    producer.abort_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, key=b"committed", value=b"visible")
    producer.commit_transaction(30)

    consumer = Consumer({"bootstrap.servers": kafka.kafka_bootstrap, "group.id": unique,
                         "isolation.level": "read_committed", "auto.offset.reset": "earliest",
                         "enable.partition.eof": True})  # fmt: skip
    consumer.subscribe([topic])
    seen: list[bytes] = []
    try:
        for _ in range(100):
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                if seen:
                    break  # partition EOF after the committed record
                continue
            seen.append(message.key())
    finally:
        consumer.close()
    assert seen == [b"committed"]


async def test_temporal_runs_a_workflow_with_an_activity(temporal, unique) -> None:
    client = await Client.connect(temporal.temporal_address)
    queue = f"rt-{unique}"
    with ThreadPoolExecutor(2) as executor:
        async with Worker(client, task_queue=queue, workflows=[ShoutWorkflow], activities=[shout],
                          activity_executor=executor):  # fmt: skip
            result = await client.execute_workflow(
                ShoutWorkflow.run, "lakeward", id=f"rt-{uuid.uuid4()}", task_queue=queue
            )
    assert result == "LAKEWARD"
