"""A whole pipeline with every hop secured: the worker and the API reach Temporal over mTLS, the
source is a MongoDB that requires TLS and client certificates (options from the spec), Kafka is
SASL_SSL with SCRAM-SHA-512 (options from the worker's settings). The snapshot and the stream both
land in Delta, and neither the SASL password nor the client key shows up in any log line."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from pydantic import SecretStr
from pymongo import MongoClient

from lakeward.settings import Settings
from tests.secure_servers import (
    ScramKafka,
    TlsMongod,
    mtls_server_context,
    scram_kafka,
    tls_mongod,
    tls_terminating_proxy,
)
from tests.test_slice import _eventually, _lake_rows, serving
from workers.main import connect

pytestmark = pytest.mark.slow
ADMIN_TOKEN = "lwt_secure-pipeline-admin"
SASL_PASSWORD = "scram-e2e-Pw-8d41c0"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def servers(
    temporal: Any, ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ScramKafka, TlsMongod, str, dict[str, Path]]]:
    root = tmp_path_factory.mktemp("secure-pipeline")
    host, _, port = temporal.temporal_address.rpartition(":")
    client = ca.issue_cert("lakeward-worker")
    files = {"ca": root / "ca.pem", "cert": root / "cert.pem", "key": root / "key.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    client.cert_chain_pems[0].write_to_path(str(files["cert"]))
    client.private_key_pem.write_to_path(str(files["key"]))
    with (
        scram_kafka(root / "kafka", ca, SASL_PASSWORD) as kafka,
        tls_mongod(root / "mongod", ca) as mongod,
        tls_terminating_proxy((host, int(port)), mtls_server_context(ca)) as proxy,
    ):
        yield kafka, mongod, f"localhost:{proxy}", files


@pytest.fixture
async def running(
    servers: Any, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[httpx.AsyncClient, Settings]]:
    kafka, _, frontend, files = servers
    monkeypatch.setenv("TEST_E2E_SASL_PASSWORD", SASL_PASSWORD)
    settings = Settings(
        temporal_address=frontend,
        temporal_tls=True,
        temporal_tls_ca_file=files["ca"],
        temporal_tls_cert_file=files["cert"],
        temporal_tls_key_file=f"file:{files['key']}",
        kafka_bootstrap=kafka.bootstrap,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username=kafka.username,
        kafka_sasl_password="env:TEST_E2E_SASL_PASSWORD",
        kafka_ssl_ca_location=kafka.ca_file,
        task_queue=f"wf-{unique}",
        io_task_queue=f"io-{unique}",
        cpu_task_queue=f"cpu-{unique}",
        topic_prefix=f"sec{unique}",
        admin_token=SecretStr(ADMIN_TOKEN),
        api_tokens_file=tmp_path / "api-tokens.json",
        audit_log=tmp_path / "audit.log",
        payload_key_file=tmp_path / "payload.key",
    )
    client = await connect(settings)  # the worker's own client: over mTLS
    async with serving(client, settings, ADMIN_TOKEN) as http:
        yield http, settings


async def test_snapshot_and_stream_through_tls_mtls_and_scram(
    running: Any, servers: Any, unique: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    http, _ = running
    _, mongod, _, _ = servers
    db = f"secure_{unique}"
    mongo = MongoClient(
        mongod.uri, tls=True, tlsCAFile=str(mongod.ca_file),
        tlsCertificateKeyFile=str(mongod.client_pem),
    )  # fmt: skip
    with mongo:
        mongo[db].orders.insert_one({"_id": 1, "item": "before"})  # for the snapshot
        spec = {
            "name": f"secure-{unique}",
            "source": {
                "uri": mongod.uri, "database": db, "collections": ["orders"],
                "tls": {"ca_file": str(mongod.ca_file),
                        "certificate_key_file": str(mongod.client_pem)},
            },
            "sink": {"uri": str(tmp_path / "lake")},
        }  # fmt: skip
        created = await http.post("/v1/pipelines", json=spec)
        assert created.status_code == 201, created.text
        table_uri = created.json()["tables"][f"{db}.orders"]

        async def streaming() -> bool:
            status = await http.get(f"/v1/pipelines/{spec['name']}")
            return bool(status.json()["state"] == "STREAMING")

        await _eventually(lambda: _lake_rows(table_uri).get("1"), timeout=180)
        deadline = asyncio.get_running_loop().time() + 120
        while not await streaming():
            assert asyncio.get_running_loop().time() < deadline, "never STREAMING"
            await asyncio.sleep(0.25)
        mongo[db].orders.insert_one({"_id": 2, "item": "after"})  # for the stream
        rows = await _eventually(lambda: len(_lake_rows(table_uri)) == 2 and _lake_rows(table_uri))
    assert rows == {"1": {"_id": 1, "item": "before"}, "2": {"_id": 2, "item": "after"}}
    key = (servers[3]["key"]).read_text().strip().splitlines()[1]
    assert SASL_PASSWORD not in caplog.text and key not in caplog.text


async def test_a_source_without_its_ca_shows_the_fix_in_the_pipeline_status(
    running: Any, servers: Any, unique: str, tmp_path: Path
) -> None:
    http, _ = running
    _, mongod, _, _ = servers
    name = f"noca-{unique}"
    spec = {
        "name": name,
        "source": {"uri": mongod.uri, "database": f"noca_{unique}", "collections": ["orders"],
                   "tls": {"certificate_key_file": str(mongod.client_pem)}},
        "sink": {"uri": str(tmp_path / "lake")},
        "snapshot": {"mode": "never"},
    }  # fmt: skip
    created = await http.post("/v1/pipelines", json=spec)
    assert created.status_code == 201, created.text

    async def status() -> str:
        return (await http.get(f"/v1/pipelines/{name}")).text

    deadline = asyncio.get_running_loop().time() + 120
    while "source.tls.ca_file" not in (text := await status()):
        assert asyncio.get_running_loop().time() < deadline, f"no clear error: {text}"
        await asyncio.sleep(0.5)
    assert "TLS handshake with MongoDB" in text and "FAILED" in text
