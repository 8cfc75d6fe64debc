"""The MongoDB password rotates in Vault mid-stream: the pipeline picks the new one up, loses
nothing and doubles nothing.

A private mongod with --auth (a replica set with a keyFile) is the source; the pipeline's spec
holds no password, only vault: references for source.username and source.password (KV v2). While
documents stream in, the credentials rotate twice: first to a new user, the old one dropped (its
credentials really stop working), then by changeUserPassword. Each time the new value is written
as a new KV version. The Delta table must end equal to the collection, and the Kafka topic must
hold exactly one insert per document.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from pymongo import MongoClient
from temporalio.client import Client

from lakeward import vault
from lakeward.mongo.admin import ensure_replica_set
from lakeward.settings import Settings
from tests.test_capture_faults import private_mongod
from tests.test_capture_strategies import reader
from tests.test_slice import _eventually, _lake_rows, serving
from tests.vault_helpers import put_kv, vault_settings, vault_stack
from workflows.contracts import DATA_CONVERTER

__all__ = ["vault_stack"]  # fixture

pytestmark = pytest.mark.slow
ADMIN_TOKEN = "lwt_rotation-test-admin"
DB = "shop"


class SecuredMongo:
    """A private mongod with --auth: an admin, and capture users created on demand."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.admin_password = secrets.token_hex(12)

    @property
    def uri(self) -> str:
        """What the spec holds: hosts and options, no user."""
        return f"mongodb://127.0.0.1:{self.port}/?replicaSet=rs0&authSource=admin"

    def admin(self) -> MongoClient[dict[str, Any]]:
        return MongoClient(
            f"mongodb://admin:{self.admin_password}@127.0.0.1:{self.port}/?replicaSet=rs0",
            serverSelectionTimeoutMS=10_000,
        )

    def create_capture_user(self, user: str) -> str:
        password = secrets.token_hex(12)
        with self.admin() as client:
            client.admin.command(
                "createUser", user, pwd=password, roles=[{"role": "read", "db": DB}]
            )
        return password


@pytest.fixture(scope="module")
def secured_mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredMongo]:
    root: Path = tmp_path_factory.mktemp("rotation-mongod")
    key = root / "keyfile"
    key.write_text(secrets.token_hex(48))
    key.chmod(0o600)
    with private_mongod(
        root, "--replSet", "rs0", "--auth", "--keyFile", str(key), "--oplogSize", "64",
        what="authenticated mongod",
    ) as port:  # fmt: skip
        ensure_replica_set("127.0.0.1", port)  # the localhost exception allows this
        mongo = SecuredMongo(port)
        with MongoClient("127.0.0.1", port, directConnection=True) as first:
            first.admin.command("createUser", "admin", pwd=mongo.admin_password, roles=["root"])
        yield mongo


@pytest.fixture
async def running(
    core_stack, vault_stack, unique, tmp_path
) -> AsyncIterator[tuple[httpx.AsyncClient, Settings]]:
    """An in-process worker and API that resolve vault: references through the stack's OpenBao
    and re-check the source credentials every second."""
    settings = vault_settings(
        vault_stack,
        temporal_address=core_stack.temporal_address,
        kafka_bootstrap=core_stack.kafka_bootstrap,
        task_queue=f"wf-{unique}",
        io_task_queue=f"io-{unique}",
        topic_prefix=f"t{unique}",
        admin_token=SecretStr(ADMIN_TOKEN),
        api_tokens_file=tmp_path / "api-tokens.json",
        audit_log=tmp_path / "audit.log",
        credentials_check_s=1.0,
    )
    client = await Client.connect(settings.temporal_address, data_converter=DATA_CONVERTER)
    try:
        async with serving(client, settings, ADMIN_TOKEN) as http:
            yield http, settings
    finally:
        vault.configure(Settings())


class SteadyWriter:
    """Inserts documents one after another from a thread until stopped."""

    def __init__(self, mongo: SecuredMongo, collection: str) -> None:
        self._mongo = mongo
        self._collection = collection
        self.written = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SteadyWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        with self._mongo.admin() as client:
            orders = client[DB][self._collection]
            while not self._stop.wait(0.005):
                orders.insert_one({"_id": f"d{self.written:06d}", "n": self.written})
                self.written += 1

    async def past(self, count: int) -> None:
        await _eventually(lambda: self.written >= count or None, timeout=60)


async def test_password_rotated_in_vault_mid_stream_loses_and_doubles_nothing(
    running, secured_mongo, vault_stack, core_stack, unique, tmp_path, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="lakeward.capture")
    http, _ = running
    collection = f"orders_{unique}"
    path = f"lakeward/worker/mongo-{unique}"
    first = secured_mongo.create_capture_user(f"cap1_{unique}")
    put_kv(vault_stack, path, username=f"cap1_{unique}", password=first)
    spec = {
        "name": f"rot-{unique}",
        "source": {
            "uri": secured_mongo.uri,
            "database": DB,
            "collections": [collection],
            "username": f"vault:secret/{path}#username",
            "password": f"vault:secret/{path}#password",
        },
        "sink": {"uri": str(tmp_path / "lake")},
        "batching": {"max_wait_ms": 50},
    }
    created = await http.post("/v1/pipelines", json=spec)
    assert created.status_code == 201, created.text
    table_uri = created.json()["tables"][f"{DB}.{collection}"]
    with secured_mongo.admin() as client:
        client[DB][collection].insert_one({"_id": "probe", "n": -1})
    await _eventually(lambda: "probe" in _lake_rows(table_uri))

    with SteadyWriter(secured_mongo, collection) as writer:
        await writer.past(200)
        # Rotation 1: a new user; the old one is dropped, so its credentials stop working.
        second = secured_mongo.create_capture_user(f"cap2_{unique}")
        put_kv(vault_stack, path, username=f"cap2_{unique}", password=second)
        with secured_mongo.admin() as client:
            client.admin.command("dropUser", f"cap1_{unique}")
        await writer.past(writer.written + 300)
        # Rotation 2: the same user, a new password.
        third = secrets.token_hex(12)
        with secured_mongo.admin() as client:
            client.admin.command("updateUser", f"cap2_{unique}", pwd=third)
        put_kv(vault_stack, path, username=f"cap2_{unique}", password=third)
        await writer.past(writer.written + 300)

    with secured_mongo.admin() as client:
        expected = {doc["_id"]: doc for doc in client[DB][collection].find()}
    assert len(expected) >= 801
    lake = await _eventually(
        lambda: (rows := _lake_rows(table_uri)) == expected and rows, timeout=120
    )
    assert len(lake) == len(expected)  # every _id once, none missing, none extra

    # Nothing doubled on the way either: one insert event per document in Kafka.
    topic = f"t{unique}.{DB}.{collection}"
    with reader(core_stack.kafka_bootstrap, topic) as data:
        inserts = Counter(r.event.key for r in data.poll() if r.event.op == "c")
    assert len(inserts) == len(expected)
    assert {key for key, n in inserts.items() if n > 1} == set()

    # Capture did reconnect (twice at least), and the status shows nothing stuck.
    reconnects = [r for r in caplog.records if "capture reconnects" in r.getMessage()]
    assert len(reconnects) >= 2
    status = (await http.get(f"/v1/pipelines/{spec['name']}")).json()
    assert status["state"] == "STREAMING"
    for secret in (first, second, third):
        assert secret not in caplog.text
        assert secret not in str(status)


async def test_vault_outage_is_retried_visibly_and_the_pipeline_recovers(
    running, test_stack, vault_stack, core_stack, unique, tmp_path
) -> None:
    """Vault stops: the running capture keeps its connection; a capture that must resolve again
    (restarted by a reconfigure) fails retryably, shown under `retrying` with a clear message;
    once Vault answers, the pipeline goes on by itself."""
    http, _ = running
    collection = f"orders_{unique}"
    path = f"lakeward/worker/outage-{unique}"
    put_kv(vault_stack, path, uri=core_stack.mongo_uri)
    name = f"out-{unique}"
    spec = {
        "name": name,
        "source": {
            "uri": f"vault:secret/{path}#uri",
            "database": f"outage_{unique}",
            "collections": [collection],
        },
        "sink": {"uri": str(tmp_path / "lake")},
    }
    created = await http.post("/v1/pipelines", json=spec)
    assert created.status_code == 201, created.text
    table_uri = created.json()["tables"][f"outage_{unique}.{collection}"]
    with MongoClient(core_stack.mongo_uri) as mongo:
        docs = mongo[f"outage_{unique}"][collection]
        docs.insert_one({"_id": "before"})
        await _eventually(lambda: "before" in _lake_rows(table_uri))

        server = next(s for s in test_stack.stack.servers if s.name == "vault")
        test_stack.stack.down([server])
        try:
            docs.insert_one({"_id": "during"})  # the running capture needs no Vault
            await _eventually(lambda: "during" in _lake_rows(table_uri))
            # A source change restarts capture, which must resolve the reference again.
            patched = await http.patch(
                f"/v1/pipelines/{name}",
                json={"source": {"discovery_interval_s": 30}},
                headers={"Content-Type": "application/merge-patch+json"},
            )
            assert patched.status_code == 200, patched.text

            async def capture_retrying() -> dict[str, Any] | None:
                body = (await http.get(f"/v1/pipelines/{name}")).json()
                found = [r for r in body["retrying"] if r["activity"] == "capture_changes"]
                return found[0] if found else None

            retrying = await _poll(capture_retrying, "capture retrying")
        finally:
            test_stack.need("vault")
        assert f"vault:secret/{path}#uri" in retrying["error"]
        assert f"Vault at {vault_stack.vault_address} does not answer" in retrying["error"]
        status = (await http.get(f"/v1/pipelines/{name}")).json()
        assert status["state"] == "STREAMING"  # retried, not failed

        put_kv(vault_stack, path, uri=core_stack.mongo_uri)  # a dev server forgets on restart
        docs.insert_one({"_id": "after"})
        await _eventually(lambda: "after" in _lake_rows(table_uri), timeout=120)


async def _poll(check: Any, what: str, timeout: float = 90.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if found := await check():
            return found
        await asyncio.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout}s")
