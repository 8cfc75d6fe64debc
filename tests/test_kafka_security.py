"""Kafka with SASL/SCRAM over TLS (a private SASL_SSL broker): Lakeward's producer, consumer and
admin calls go through it end to end, and refused credentials or an untrusted certificate are
clear errors that name the fix and never the secret."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from deltalake import DeltaTable
from pymongo import MongoClient

from lakeward.apply import BatchApplier, documents
from lakeward.capture import build_capture
from lakeward.delta.table import CURRENT_STATE_SCHEMA, DEAD_LETTER_SCHEMA, TxnTable
from lakeward.kafka.admin import ensure_topic
from lakeward.kafka.consumer import PartitionReader
from lakeward.kafka.producer import TransactionalPublisher
from lakeward.kafka.security import (
    KafkaAuthenticationError,
    KafkaConnection,
    client_config,
    kafka_connection,
)
from lakeward.settings import Settings
from tests.secure_servers import ScramKafka, scram_kafka
from tests.test_capture_strategies import eventually, make_spec, running

PASSWORD = "scram-Pa55-5f1c2b"  # the broker's; searched for in every log line and error
WRONG = "wrong-Pa55-77aa01"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScramKafka]:
    with scram_kafka(tmp_path_factory.mktemp("scram-kafka"), trustme.CA(), PASSWORD) as kafka:
        yield kafka


def _connection(broker: ScramKafka, **overrides: Any) -> KafkaConnection:
    options: dict[str, Any] = {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": broker.username,
        "sasl_password": PASSWORD,
        "ssl_ca_location": str(broker.ca_file),
        **overrides,
    }
    return KafkaConnection(broker.bootstrap, **options)


def test_settings_build_a_sasl_ssl_config_with_the_password_resolved_at_use(
    broker: ScramKafka, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_KAFKA_SCRAM_PASSWORD", PASSWORD)
    settings = Settings(
        kafka_bootstrap=broker.bootstrap,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username=broker.username,
        kafka_sasl_password="env:TEST_KAFKA_SCRAM_PASSWORD",
        kafka_ssl_ca_location=broker.ca_file,
    )
    connection = kafka_connection(settings)
    assert PASSWORD not in repr(connection) and PASSWORD not in connection.describe()
    assert client_config(connection)["sasl.password"] == PASSWORD
    assert client_config(connection)["ssl.endpoint.identification.algorithm"] == "https"
    ensure_topic(connection, "settings-probe")  # the broker lets it in


async def test_capture_and_apply_through_sasl_ssl_scram(
    broker: ScramKafka, mongo: Any, unique: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    connection = _connection(broker)
    collection = f"orders_{unique}"
    spec = make_spec(mongo, "shop", f"scram-{unique}", [collection])
    with MongoClient(mongo.mongo_uri) as client:
        start_at = time.time() - 1
        client.shop[collection].insert_one({"_id": 1, "item": "tea"})
    prefix = f"scram{unique}"
    capture = build_capture(spec, mongo.mongo_uri, connection, prefix, start_at=start_at)
    async with running(capture) as run:
        # A fresh broker loads its transaction coordinator first: generous on a busy machine.
        await eventually(
            lambda: run.progress and run.progress[-1].events, "the insert captured", timeout=180
        )
    lake = tmp_path / "lake"
    applier = BatchApplier(
        spec.name,
        PartitionReader(connection, f"{prefix}.shop.{collection}"),
        TxnTable(str(lake / "orders"), CURRENT_STATE_SCHEMA),
        TxnTable(str(lake / "dead_letters"), DEAD_LETTER_SCHEMA),
    )
    assert applier.apply_once(max_records=100, max_wait_s=1, idle_s=30).applied == 1
    table = DeltaTable(str(lake / "orders")).to_pyarrow_table()
    assert documents(table) == [{"_id": 1, "item": "tea"}]
    assert PASSWORD not in caplog.text


def test_a_wrong_password_is_a_clear_error_without_the_secret(
    broker: ScramKafka, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = _connection(broker, sasl_password=WRONG)
    calls = {
        "admin": lambda: ensure_topic(wrong, "never-created"),
        "producer": lambda: TransactionalPublisher(wrong, "lakeward-wrong-password"),
        "consumer": lambda: PartitionReader(wrong, "never-created"),
    }
    for name, call in calls.items():
        with pytest.raises(KafkaAuthenticationError) as caught:
            call()
        message = str(caught.value)
        assert "Authentication failed" in message, name
        assert "LAKEWARD_KAFKA_SASL_PASSWORD" in message, name
        assert f"user {broker.username!r}" in message, name
        assert WRONG not in message and PASSWORD not in message, name
    assert WRONG not in caplog.text and PASSWORD not in caplog.text


def test_an_untrusted_broker_certificate_names_the_ca_setting(broker: ScramKafka) -> None:
    stranger = trustme.CA()  # a CA that did not sign the broker's certificate
    refused = pytest.raises(KafkaAuthenticationError, match="LAKEWARD_KAFKA_SSL_CA_LOCATION")
    with stranger.cert_pem.tempfile() as other_ca, refused:
        ensure_topic(_connection(broker, ssl_ca_location=other_ca), "never-created")


# -- the librdkafka config (pure) ----------------------------------------------------------------


def test_the_client_config_per_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    assert client_config("h:9092") == {"bootstrap.servers": "h:9092"}
    assert client_config(KafkaConnection("h:9092")) == {
        "bootstrap.servers": "h:9092",
        "security.protocol": "PLAINTEXT",
    }
    monkeypatch.setenv("TEST_KAFKA_KEY_PASSWORD", "key-pw-31")
    mutual = KafkaConnection(
        "h:9093", "SSL", ssl_ca_location="/ca.pem", ssl_certificate_location="/c.pem",
        ssl_key_location="/k.pem", ssl_key_password="env:TEST_KAFKA_KEY_PASSWORD",
        ssl_endpoint_identification=False,
    )  # fmt: skip
    config = client_config(mutual)
    assert config["ssl.key.password"] == "key-pw-31" and "sasl.mechanism" not in config
    assert config["ssl.endpoint.identification.algorithm"] == "none"
    assert "key-pw-31" not in repr(mutual) and "TEST_KAFKA_KEY_PASSWORD" not in repr(mutual)
    with pytest.raises(KafkaAuthenticationError, match="LAKEWARD_KAFKA_SASL_PASSWORD"):
        client_config(KafkaConnection("h:9092", "SASL_PLAINTEXT", sasl_username="u"))
