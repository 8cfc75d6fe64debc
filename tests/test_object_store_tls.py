"""A lake on an https S3 endpoint signed by a private CA (the test stack's SeaweedFS behind a
TLS-terminating proxy): delta-rs has no storage option for a CA bundle, but it trusts the bundle
named by SSL_CERT_FILE in the worker's environment; without it the write is refused.

Each write runs in a child process: the trust store is read from the environment when delta-rs
builds its HTTP client, and the test's own process must not change for the other tests."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from lakeward.stack.servers_extra import LAKE_BUCKET, s3_storage_options
from tests.secure_servers import tls_terminating_proxy

pytestmark = pytest.mark.slow

#: Writes one row through Lakeward's own table writer (the storage options as the worker
#: resolves them) and prints the table version, or the error's text.
_WRITE = """
import json, sys
import pyarrow as pa
from lakeward.delta.storage import lake_storage_options
from lakeward.delta.table import TxnTable
from lakeward.settings import Settings
uri, options = sys.argv[1], json.loads(sys.argv[2])
schema = pa.schema([pa.field("kafka_offset", pa.int64(), nullable=False)])
table = TxnTable(uri, schema, lake_storage_options(uri, Settings(lake_storage_options=options)))
try:
    rows = pa.table({"kafka_offset": [1]}, schema=schema)
    outcome = table.append(rows, {"t/0": 1}, {"t/0": None})
except Exception as exc:
    print("ERROR", type(exc).__name__, exc)
else:
    print("VERSION", outcome.version)
"""


@pytest.fixture(scope="module")
def https_store(test_stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """(storage options for an https endpoint, the CA bundle that signed its certificate)."""
    options = s3_storage_options(test_stack.need("s3"))
    host, _, port = options["AWS_ENDPOINT_URL"].removeprefix("http://").rpartition(":")
    ca = trustme.CA()
    bundle = tmp_path_factory.mktemp("s3-ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    with tls_terminating_proxy((host, int(port)), context) as proxy:
        https = {k: v for k, v in options.items() if k != "AWS_ALLOW_HTTP"}
        https["AWS_ENDPOINT_URL"] = f"https://localhost:{proxy}"
        yield https, bundle


def _write(uri: str, options: dict[str, str], **env: str) -> str:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SSL_CERT"))}
    done = subprocess.run(
        [sys.executable, "-c", _WRITE, uri, json.dumps(options)],
        env={**child_env, "PYTHONPATH": str(Path(__file__).parents[1]), **env},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_a_lake_on_https_with_a_private_ca_needs_ssl_cert_file(https_store, unique) -> None:
    options, bundle = https_store
    uri = f"s3://{LAKE_BUCKET}/tls-{unique}/table"
    refused = _write(uri, options)
    assert refused.startswith("ERROR TableStorageError"), refused
    assert "cannot reach the object store at https://localhost" in refused
    assert options["AWS_SECRET_ACCESS_KEY"] not in refused
    assert _write(uri, options, SSL_CERT_FILE=str(bundle)) == "VERSION 1"  # created, appended
