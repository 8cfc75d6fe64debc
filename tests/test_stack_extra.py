"""The optional servers of the local stack, started for real: s3, vault, prometheus, connect."""

from __future__ import annotations

import json
import stat
import threading
import time
from pathlib import Path

import httpx
import hvac
import psutil
import pyarrow as pa
import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient
from deltalake import DeltaTable, write_deltalake
from pymongo import MongoClient

from lakeward.settings import StackSettings
from lakeward.stack import Stack
from lakeward.stack.server import StackContext
from lakeward.stack.servers_extra import (
    DEBEZIUM_MONGODB_CONNECTOR,
    LAKE_BUCKET,
    s3_credentials,
    s3_storage_options,
    vault_token,
)

pytestmark = pytest.mark.slow


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _listening(pid: int) -> set[tuple[str, int]]:
    """(ip, port) of every socket the process and its children listen on."""
    proc = psutil.Process(pid)
    found = set()
    for member in [proc, *proc.children(recursive=True)]:
        for conn in member.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                found.add((conn.laddr.ip, conn.laddr.port))
    return found


@pytest.mark.parametrize(
    ("name", "needs"),
    [("s3", ()), ("vault", ()), ("prometheus", ()), ("connect", ("kafka",))],
    ids=["s3", "vault", "prometheus", "connect"],
)
def test_server_listens_on_loopback_and_only_on_its_declared_ports(test_stack, name, needs) -> None:
    settings = test_stack.need(*needs, name)
    stack = Stack(settings)
    (server,) = [s for s in stack.servers if s.name == name]
    pid = stack.process(server).read_pid()
    assert pid is not None
    listening = _listening(pid)
    assert {ip.removeprefix("::ffff:") for ip, _ in listening} == {"127.0.0.1"}
    declared = {p.number for p in server.ports(stack.ctx)}
    assert {port for _, port in listening} == declared


def test_delta_table_round_trips_through_s3(test_stack, unique) -> None:
    settings = test_stack.need("s3")
    uri = f"s3://{LAKE_BUCKET}/{unique}/t"
    options = s3_storage_options(settings)
    rows = pa.table({"_id": ["a", "b", "c"], "qty": pa.array([1, 2, 3], pa.int64())})

    write_deltalake(uri, rows, storage_options=options)
    write_deltalake(uri, rows.slice(0, 1), storage_options=options, mode="append")

    table = DeltaTable(uri, storage_options=options)
    assert table.version() == 1
    read = table.to_pyarrow_table().sort_by([("_id", "ascending"), ("qty", "ascending")])
    assert read.to_pylist() == [
        {"_id": "a", "qty": 1},
        {"_id": "a", "qty": 1},
        {"_id": "b", "qty": 2},
        {"_id": "c", "qty": 3},
    ]


def test_concurrent_delta_commits_on_s3_never_overwrite_each_other(test_stack, unique) -> None:
    """SeaweedFS must honour conditional put: without it two writers of the same version both
    "succeed" and one commit silently disappears."""
    settings = test_stack.need("s3")
    uri = f"s3://{LAKE_BUCKET}/{unique}/race"
    options = s3_storage_options(settings)
    write_deltalake(uri, pa.table({"w": pa.array([-1], pa.int64())}), storage_options=options)
    committed: list[int] = []

    def append(value: int) -> None:
        row = pa.table({"w": pa.array([value], pa.int64())})
        write_deltalake(uri, row, storage_options=options, mode="append")
        committed.append(value)

    for round_ in range(3):
        writers = [threading.Thread(target=append, args=(round_ * 10 + k,)) for k in range(4)]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join()

    table = DeltaTable(uri, storage_options=options)
    assert len(committed) == 12
    assert table.version() == 12
    assert sorted(table.to_pyarrow_table().column("w").to_pylist()) == [-1, *sorted(committed)]


def test_s3_refuses_anonymous_requests_and_keeps_its_keys_private(test_stack) -> None:
    settings = test_stack.need("s3")
    anonymous = httpx.get(f"{settings.s3_endpoint}/{LAKE_BUCKET}/", timeout=5)
    assert anonymous.status_code == 403

    secrets_dir = settings.stack_dir.resolve() / "secrets"
    assert _mode(secrets_dir) == 0o700
    assert _mode(secrets_dir / "s3.json") == 0o600
    assert _mode(secrets_dir / "s3-identities.json") == 0o600
    creds = s3_credentials(settings)
    assert creds.secret_access_key not in repr(creds)
    assert json.loads((secrets_dir / "s3.json").read_text())["access_key_id"] == (
        creds.access_key_id
    )


def test_secret_round_trips_through_openbao_kv_v2(test_stack, unique) -> None:
    settings = test_stack.need("vault")
    token_file = settings.stack_dir.resolve() / "secrets" / "vault-token"
    assert _mode(token_file) == 0o600
    client = hvac.Client(url=settings.vault_address, token=vault_token(settings))
    assert client.is_authenticated()

    path = f"lakeward-tests/{unique}"
    client.secrets.kv.v2.create_or_update_secret(
        path=path, secret={"uri": "mongodb://u:p@h/"}, mount_point="secret"
    )
    read = client.secrets.kv.v2.read_secret_version(
        path=path, mount_point="secret", raise_on_deleted_version=True
    )
    assert read["data"]["data"] == {"uri": "mongodb://u:p@h/"}


def test_openbao_root_token_stays_out_of_argv_and_home(test_stack) -> None:
    settings = test_stack.need("vault")
    stack = Stack(settings)
    (server,) = [s for s in stack.servers if s.name == "vault"]
    pid = stack.process(server).read_pid()
    assert pid is not None
    token = vault_token(settings)
    assert not any(token in arg for arg in psutil.Process(pid).cmdline())
    # Dev mode prints the token in its banner: the log is private like the token file.
    assert _mode(stack.process(server).log_file) == 0o600
    home_token = Path.home() / ".vault-token"
    assert not home_token.exists() or token not in home_token.read_text()


def test_prometheus_is_ready_and_scrapes_the_api_and_the_worker(test_stack) -> None:
    settings = test_stack.need("prometheus")
    base = f"http://{settings.host}:{settings.prometheus_port}"
    assert httpx.get(f"{base}/-/ready", timeout=5).status_code == 200

    def scraped() -> dict[str, str]:
        response = httpx.get(f"{base}/api/v1/targets", timeout=5).json()
        return {t["labels"]["job"]: t["scrapeUrl"] for t in response["data"]["activeTargets"]}

    # A fresh Prometheus lists its targets once the scrape manager has loaded the config.
    deadline = time.monotonic() + 60
    while not scraped() and time.monotonic() < deadline:
        time.sleep(0.25)
    assert scraped() == {
        "lakeward-api": f"http://{settings.host}:{settings.api_port}/metrics",
        "lakeward-worker": f"http://{settings.host}:{settings.worker_metrics_port}/metrics",
    }


def test_connect_lists_the_debezium_mongodb_connector(test_stack) -> None:
    settings = test_stack.need("kafka", "connect")
    base = f"http://{settings.host}:{settings.connect_port}"
    plugins = httpx.get(f"{base}/connector-plugins", timeout=10).json()
    assert DEBEZIUM_MONGODB_CONNECTOR in {p["class"] for p in plugins}
    stack = Stack(settings)
    (row,) = stack.status([s for s in stack.servers if s.name == "connect"])
    assert row.state == "running"
    assert row.version == "4.3.0 (Debezium 3.6.1.Final)"


def test_debezium_connector_emits_snapshot_and_change_events(test_stack, unique) -> None:
    settings = test_stack.need("mongo", "kafka", "connect")
    base = f"http://{settings.host}:{settings.connect_port}"
    db, coll, prefix = f"dbz_{unique}", "orders", f"dbz{unique}"
    topic = f"{prefix}.{db}.{coll}"
    with MongoClient(settings.mongo_uri) as client:
        client[db][coll].insert_one({"_id": "before", "qty": 1})
        created = httpx.put(
            f"{base}/connectors/{prefix}/config",
            json={
                "connector.class": DEBEZIUM_MONGODB_CONNECTOR,
                "mongodb.connection.string": settings.mongo_uri,
                "topic.prefix": prefix,
                "collection.include.list": f"{db}.{coll}",
                "snapshot.mode": "initial",
                "tasks.max": "1",
                # The broker does not auto-create topics; Connect creates the connector's.
                "topic.creation.default.replication.factor": "1",
                "topic.creation.default.partitions": "1",
            },
            timeout=30,
        )
        assert created.status_code == 201, created.text
        try:
            events = _consume(settings, topic, count=1)
            client[db][coll].insert_one({"_id": "after", "qty": 2})
            events += _consume(settings, topic, count=2)[1:]
        finally:
            httpx.delete(f"{base}/connectors/{prefix}", timeout=30)
            client.drop_database(db)

    assert [e["op"] for e in events] == ["r", "c"]
    assert [json.loads(e["after"]) for e in events] == [
        {"_id": "before", "qty": 1},
        {"_id": "after", "qty": 2},
    ]
    assert {e["source"]["collection"] for e in events} == {coll}


def _consume(settings: StackSettings, topic: str, count: int, timeout: float = 90.0) -> list[dict]:
    """The first `count` JSON values of a topic, read from the beginning."""
    deadline = time.monotonic() + timeout
    # Subscribing before the connector created the topic would wait for a metadata refresh.
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    while topic not in admin.list_topics(timeout=10).topics:
        assert time.monotonic() < deadline, f"topic {topic} was not created in {timeout}s"
        time.sleep(0.5)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"test-{topic}-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    values: list[dict] = []
    try:
        while len(values) < count and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None or message.error() or message.value() is None:
                continue
            values.append(json.loads(message.value()))
    finally:
        consumer.close()
    assert len(values) >= count, f"{len(values)} of {count} events on {topic} in {timeout}s"
    return values


def test_stack_context_and_settings_address_the_same_credentials(test_stack) -> None:
    settings = test_stack.need("s3")
    assert s3_storage_options(StackContext(settings)) == s3_storage_options(settings)
