"""Temporal over mTLS: the dev server serves plaintext only, so a TLS-terminating proxy that
requires client certificates stands in front of it (a real TLS frontend for the SDK's client).
The worker's and the API's clients reach Temporal through it with the settings' certificates; a
missing client certificate, an untrusted frontend or a TLS client against a plaintext frontend
are clear errors naming the settings to check."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import trustme
from temporalio.worker import Worker

from api.app import create_app
from api.temporal import TemporalConnectError, connect_client
from lakeward.settings import Settings
from lakeward.temporal_connection import TemporalConfigError, temporal_connection
from tests.roundtrip_workflow import ShoutWorkflow, shout
from tests.secure_servers import mtls_server_context, tls_terminating_proxy
from workers.main import connect


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def frontend(temporal: Any, ca: trustme.CA) -> Iterator[str]:
    """host:port of an mTLS frontend in front of the test stack's Temporal."""
    host, _, port = temporal.temporal_address.rpartition(":")
    with tls_terminating_proxy((host, int(port)), mtls_server_context(ca)) as proxy_port:
        yield f"localhost:{proxy_port}"


@pytest.fixture
def client_files(ca: trustme.CA, tmp_path: Path) -> dict[str, Path]:
    cert = ca.issue_cert("lakeward-worker")
    files = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    cert.cert_chain_pems[0].write_to_path(str(files["cert"]))
    cert.private_key_pem.write_to_path(str(files["key"]))
    return files


def _mtls(address: str, files: dict[str, Path], **overrides: Any) -> Settings:
    options: dict[str, Any] = {
        "temporal_address": address,
        "temporal_tls": True,
        "temporal_tls_ca_file": files["ca"],
        "temporal_tls_cert_file": files["cert"],
        "temporal_tls_key_file": f"file:{files['key']}",  # a secret reference to the PEM
        "payload_key_file": files["ca"].parent / "payload.key",
        **overrides,
    }
    return Settings(**options)


async def test_worker_and_api_clients_run_a_workflow_over_mtls(
    frontend: str, client_files: dict[str, Path], unique: str
) -> None:
    settings = _mtls(frontend, client_files)
    client = await connect(settings)  # the worker's client: codec, interceptors, mTLS
    queue = f"mtls-{unique}"
    with ThreadPoolExecutor(2) as executor:
        async with Worker(client, task_queue=queue, workflows=[ShoutWorkflow], activities=[shout],
                          activity_executor=executor):  # fmt: skip
            result = await client.execute_workflow(
                ShoutWorkflow.run, "over tls", id=f"mtls-{uuid.uuid4()}", task_queue=queue
            )
    assert result == "OVER TLS"
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        api_client = app.state.client
        assert await api_client.count_workflows(f"TaskQueue = '{queue}'") is not None


async def test_a_client_without_a_certificate_is_refused_with_the_settings_named(
    frontend: str, client_files: dict[str, Path]
) -> None:
    settings = _mtls(
        frontend, client_files, temporal_tls_cert_file=None, temporal_tls_key_file=None
    )
    with pytest.raises(TemporalConnectError) as caught:
        await connect_client(settings)
    assert "LAKEWARD_TEMPORAL_TLS_CERT_FILE" in str(caught.value)
    assert frontend in str(caught.value)


async def test_an_untrusted_frontend_is_refused(
    frontend: str, client_files: dict[str, Path], tmp_path: Path
) -> None:
    stranger = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger))
    with pytest.raises(TemporalConnectError, match="LAKEWARD_TEMPORAL_TLS_CA_FILE") as caught:
        await connect_client(_mtls(frontend, client_files, temporal_tls_ca_file=stranger))
    key = client_files["key"].read_text().strip().splitlines()[1]  # a line of the key itself
    assert key not in str(caught.value)


async def test_tls_against_a_plaintext_frontend_and_plaintext_against_tls_fail_clearly(
    temporal: Any, frontend: str, client_files: dict[str, Path]
) -> None:
    plaintext_server = _mtls(temporal.temporal_address, client_files)
    with pytest.raises(TemporalConnectError, match="serves TLS on this port"):
        await connect_client(plaintext_server)
    with pytest.raises(TemporalConnectError, match="LAKEWARD_TEMPORAL_TLS=true"):
        await connect_client(Settings(temporal_address=frontend))


def test_incomplete_settings_name_what_is_missing(client_files: dict[str, Path]) -> None:
    with pytest.raises(TemporalConfigError, match="LAKEWARD_TEMPORAL_TLS_KEY_FILE"):
        temporal_connection(_mtls("h:1", client_files, temporal_tls_key_file=None))
    with pytest.raises(TemporalConfigError, match="LAKEWARD_TEMPORAL_TLS is off"):
        temporal_connection(_mtls("h:1", client_files, temporal_tls=False))
    # An API key implies TLS (Temporal Cloud); neither it nor the key shows in the repr.
    cloud = temporal_connection(Settings(temporal_address="x.tmprl.cloud:7233",
                                         temporal_api_key="api-key-0f9e8d"))  # fmt: skip
    assert cloud.tls is not None and cloud.api_key == "api-key-0f9e8d"
    assert "api-key-0f9e8d" not in repr(cloud) and "api-key" not in cloud.describe()
    key = client_files["key"].read_text().strip()
    assert key not in repr(temporal_connection(_mtls("h:1", client_files)))
