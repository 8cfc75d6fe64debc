"""MongoDB over TLS with client certificates required (a private single-node replica set with
--tlsMode requireTLS): capture and snapshot deliver through it, with the options from the spec,
the URI or the worker's settings; a missing CA or client certificate is a clear error naming the
setting to fix, and the key's password shows up in no log line or error."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from pymongo import MongoClient
from pymongo.errors import AutoReconnect

from lakeward.capture import build_capture
from lakeward.credentials import source_uri
from lakeward.mongo.tls import MongoTLS, TransportSecurityError, mongo_tls, tls_failure, with_tls
from lakeward.settings import Settings
from lakeward.snapshot import SnapshotCopier
from tests.secure_servers import TlsMongod, tls_mongod
from tests.test_capture_strategies import TopicReader, eventually, make_spec, running
from workflows.spec import SourceTLS

KEY_PASSWORD = "k3y-p@ss&w+rd/9c1"  # characters a URI must escape; searched for in the logs


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsMongod]:
    with tls_mongod(tmp_path_factory.mktemp("tls-mongod"), trustme.CA()) as mongod:
        yield mongod


@pytest.fixture(scope="module")
def encrypted_client_pem(server: TlsMongod) -> Path:
    """The client's certificate with its key encrypted under KEY_PASSWORD."""
    pem = server.client_pem.read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(KEY_PASSWORD.encode()),
    )
    certificates = pem[pem.index(b"-----BEGIN CERTIFICATE-----") :]
    path = server.client_pem.with_name("client-encrypted.pem")
    path.write_bytes(encrypted + certificates)
    return path


def _spec(server: TlsMongod, name: str, collection: str, **tls: Any) -> Any:
    source = SimpleNamespace(mongo_uri=server.uri)
    return make_spec(source, "shop", name, [collection], **({"tls": tls} if tls else {}))


def _insert(server: TlsMongod, collection: str, *docs: dict[str, Any]) -> float:
    """Insert over TLS (the test's own client); returns a capture start point before it."""
    with MongoClient(
        server.uri, tls=True, tlsCAFile=str(server.ca_file),
        tlsCertificateKeyFile=str(server.client_pem),
    ) as client:  # fmt: skip
        start_at = time.time() - 1
        client.shop[collection].insert_many(list(docs))
    return start_at


async def test_capture_through_tls_with_an_encrypted_client_key(
    server: TlsMongod,
    encrypted_client_pem: Path,
    kafka: Any,
    unique: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("TEST_MONGO_KEY_PASSWORD", KEY_PASSWORD)
    collection = f"orders_{unique}"
    spec = _spec(
        server, f"tls-{unique}", collection, ca_file=str(server.ca_file),
        certificate_key_file=str(encrypted_client_pem),
        certificate_key_password="env:TEST_MONGO_KEY_PASSWORD",
    )  # fmt: skip
    assert KEY_PASSWORD not in spec.model_dump_json()  # what workflow history would hold
    start_at = _insert(server, collection, {"_id": 1, "item": "tea"})
    prefix = f"tls{unique}"
    uri = source_uri(spec.source, Settings())
    capture = build_capture(spec, uri, kafka.kafka_bootstrap, prefix, start_at=start_at)
    reader = TopicReader(kafka.kafka_bootstrap, spec.topic(prefix, collection))
    async with running(capture):
        records = await eventually(lambda: reader.poll() and reader.records, "the insert")
    assert [r.event.after for r in records] == [{"_id": 1, "item": "tea"}]
    assert KEY_PASSWORD not in caplog.text


async def test_snapshot_through_tls_options_in_the_uri(
    server: TlsMongod, kafka: Any, unique: str
) -> None:
    collection = f"items_{unique}"
    _insert(server, collection, {"_id": "a", "n": 1}, {"_id": "b", "n": 2})
    files = f"tlsCAFile={server.ca_file}&tlsCertificateKeyFile={server.client_pem}"
    uri = f"{server.uri}&tls=true&{files}"
    spec = make_spec(SimpleNamespace(mongo_uri=uri), "shop", f"snap-{unique}", [collection])
    prefix = f"tlssnap{unique}"
    copier = SnapshotCopier(
        spec, collection, source_uri(spec.source), kafka.kafka_bootstrap, prefix
    )
    [whole] = await copier.plan(range_docs=1000)
    copied = await copier.copy(whole)
    assert copied.documents == 2
    reader = TopicReader(kafka.kafka_bootstrap, spec.topic(prefix, collection))
    records = await eventually(lambda: len(reader.poll()) >= 2 and reader.records, "2 rows")
    assert sorted(r.event.after["n"] for r in records) == [1, 2]


async def test_worker_settings_supply_tls_when_the_spec_has_none(
    server: TlsMongod, kafka: Any, unique: str
) -> None:
    collection = f"plain_{unique}"
    _insert(server, collection, {"_id": 1})
    spec = _spec(server, f"settings-{unique}", collection)
    settings = Settings(
        mongo_tls=True,
        mongo_tls_ca_file=server.ca_file,
        mongo_tls_certificate_key_file=server.client_pem,
    )
    copier = SnapshotCopier(
        spec, collection, source_uri(spec.source, settings), kafka.kafka_bootstrap, f"s{unique}"
    )
    assert len(await copier.plan(range_docs=1000)) == 1


@pytest.mark.parametrize(
    ("tls", "fix"),
    [
        pytest.param({"certificate_key_file": "CLIENT"}, "source.tls.ca_file", id="no CA"),
        pytest.param({"ca_file": "CA"}, "source.tls.certificate_key_file", id="no client cert"),
    ],
)
async def test_a_failed_handshake_names_the_fix(
    server: TlsMongod, kafka: Any, unique: str, tls: dict[str, str], fix: str
) -> None:
    files = {"CLIENT": str(server.client_pem), "CA": str(server.ca_file)}
    spec = _spec(server, f"bad-{unique}", "orders", **{k: files[v] for k, v in tls.items()})
    capture = build_capture(
        spec, source_uri(spec.source), kafka.kafka_bootstrap, f"bad{unique}", start_at=None
    )
    with pytest.raises(TransportSecurityError) as caught:
        await capture.run(lambda progress: None)
    message = str(caught.value)
    assert fix in message and f"localhost:{server.port}" in message
    assert "TLS" in message


# -- the URI every client dials (pure) ------------------------------------------------------------


def test_tls_options_replace_their_namesakes_and_keep_the_rest_verbatim(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_KEY_PASSWORD", "p&w+d/%")
    uri = "mongodb://u:p%40ss@h1:1,h2:2/db?replicaSet=rs0&TLS=false&ssl=false&authSource=admin"
    tls = MongoTLS("/etc/ca.pem", "/etc/client.pem", "env:TEST_KEY_PASSWORD", True)
    written = with_tls(uri, tls)
    assert written.startswith("mongodb://u:p%40ss@h1:1,h2:2/db?replicaSet=rs0&authSource=admin&")
    options = dict(pair.split("=", 1) for pair in written.split("?", 1)[1].split("&"))
    assert options["tls"] == "true" and "TLS" not in options and "ssl" not in options
    assert options["tlsCAFile"] == "%2Fetc%2Fca.pem"
    assert options["tlsCertificateKeyFilePassword"] == "p%26w%2Bd%2F%25"
    assert options["tlsAllowInvalidHostnames"] == "true"
    assert with_tls("mongodb://h:1", MongoTLS()) == "mongodb://h:1/?tls=true"
    assert with_tls(uri, None) == uri


def test_the_spec_tls_block_wins_whole_over_the_settings() -> None:
    settings = Settings(mongo_tls=True, mongo_tls_ca_file=Path("/worker/ca.pem"))
    from_settings = mongo_tls(None, settings)
    assert from_settings is not None and from_settings.ca_file == "/worker/ca.pem"
    from_spec = mongo_tls(SourceTLS(certificate_key_file="/spec/client.pem"), settings)
    assert from_spec == MongoTLS(None, "/spec/client.pem", None, False)
    assert mongo_tls(SourceTLS(enabled=False), settings) is None
    assert mongo_tls(None, Settings()) is None


def test_the_spec_takes_a_key_password_as_a_reference_only() -> None:
    with pytest.raises(ValueError, match="must be a secret reference"):
        SourceTLS(certificate_key_password="plain-password")
    assert SourceTLS(certificate_key_password="vault:kv/mongo#key").certificate_key_password


@pytest.mark.parametrize(
    "closed", ["connection is already closed", "connection closed", "connection reset by peer"]
)
def test_a_connection_closed_after_the_tls_handshake_asks_for_a_client_certificate(closed) -> None:
    """TLS 1.3 servers refuse a missing client certificate after the handshake; pymongo words
    the closed connection in several ways, depending on when it notices."""
    error = AutoReconnect(f"db1:27017: {closed} (configured timeouts: connectTimeoutMS: 20000.0ms)")
    explained = tls_failure(error, "mongodb://db1:27017/?tls=true&tlsCAFile=/ca.pem")
    assert explained is not None and "source.tls.certificate_key_file" in str(explained)
    with_cert = "mongodb://db1:27017/?tls=true&tlsCertificateKeyFile=/client.pem"
    assert tls_failure(error, with_cert) is None  # the certificate is sent: something else
    assert tls_failure(error, "mongodb://db1:27017/") is None  # no TLS at all
