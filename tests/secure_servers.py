"""Private servers with transport security for the transport-security tests: a Kafka broker with
a SASL_SSL listener (SCRAM-SHA-512 users made at format time) and a mongod that requires TLS and
client certificates. Certificates come from `trustme`; every server binds 127.0.0.1 on free
ports and is stopped by its process handle."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography.hazmat.primitives import serialization

from lakeward.settings import StackSettings
from lakeward.stack.servers import LOG4J2_PROPERTIES, MongoServer
from tests.test_capture_faults import stop_process

__all__ = [
    "ScramKafka",
    "TlsMongod",
    "free_port",
    "mtls_server_context",
    "scram_kafka",
    "tls_mongod",
    "tls_terminating_proxy",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + 90
    while True:
        assert process.poll() is None, f"{what} exited:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{what} did not listen within 90s"
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        time.sleep(0.1)


@dataclass(frozen=True)
class ScramKafka:
    port: int
    ca_file: Path
    username: str
    password: str

    @property
    def bootstrap(self) -> str:
        # "localhost": the name on the broker's certificate, so endpoint identification holds.
        return f"localhost:{self.port}"


_SCRAM_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller}
listeners=SASL_SSL://localhost:{port},INTERNAL://127.0.0.1:{internal},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=SASL_SSL://localhost:{port},INTERNAL://127.0.0.1:{internal}
controller.listener.names=CONTROLLER
listener.security.protocol.map=SASL_SSL:SASL_SSL,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=INTERNAL
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={jaas}
ssl.keystore.type=PEM
ssl.keystore.location={keystore}
ssl.truststore.type=PEM
ssl.truststore.location={ca}
log.dirs={log_dir}
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
"""


@contextlib.contextmanager
def scram_kafka(root: Path, ca: trustme.CA, password: str) -> Iterator[ScramKafka]:
    """A one-node KRaft broker whose client listener is SASL_SSL with SCRAM-SHA-512; user
    `lakeward` with `password` exists from the start (created at format time)."""
    root.mkdir(parents=True, exist_ok=True)
    port, internal, controller = free_port(), free_port(), free_port()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    keystore = root / "broker.pem"
    # Kafka's PEM keystore: the private key (PKCS#8, which is all it reads), then the chain.
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), password=None)
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    keystore.write_bytes(pkcs8 + b"".join(c.bytes() for c in cert.cert_chain_pems))
    ca_file = root / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    properties = root / "server.properties"
    properties.write_text(
        _SCRAM_PROPERTIES.format(
            port=port, internal=internal, controller=controller, keystore=keystore, ca=ca_file,
            log_dir=root / "log",
            jaas="org.apache.kafka.common.security.scram.ScramLoginModule required;",
        )
    )  # fmt: skip
    (root / "log4j2.properties").write_text(LOG4J2_PROPERTIES)
    java = [
        "java", "-Xmx384m", "-Xms64m", "-XX:+UseSerialGC",
        f"-Dlog4j2.configurationFile={root / 'log4j2.properties'}",
        "-cp", f"{StackSettings().lib_dir.resolve() / 'kafka'}/*",
    ]  # fmt: skip
    formatted = subprocess.run(
        [*java, "kafka.tools.StorageTool", "format", "-t", "lakeward-scram-test-0001",
         "-c", str(properties),
         "--add-scram", f"SCRAM-SHA-512=[name=lakeward,password={password}]"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert formatted.returncode == 0, formatted.stderr[-2000:]
    log_path = root / "kafka.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*java, "kafka.Kafka", str(properties)], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        _wait_for_port(port, process, log_path, "SASL_SSL broker")
        yield ScramKafka(port=port, ca_file=ca_file, username="lakeward", password=password)
    finally:
        stop_process(process)


@dataclass(frozen=True)
class TlsMongod:
    port: int
    ca_file: Path
    client_pem: Path  # client certificate and key in one file, as mongod's tools expect

    @property
    def uri(self) -> str:
        """No TLS options: they come from the spec (or the settings) in these tests."""
        return f"mongodb://localhost:{self.port}/?replicaSet=rs0&serverSelectionTimeoutMS=5000"


@contextlib.contextmanager
def tls_mongod(root: Path, ca: trustme.CA) -> Iterator[TlsMongod]:
    """A single-node replica set that accepts TLS only and requires a client certificate
    signed by `ca`; initiated and PRIMARY when yielded."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir()
    port = free_port()
    server_pem, ca_file, client_pem = root / "server.pem", root / "ca.pem", root / "client.pem"
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(server_pem)
    )
    ca.cert_pem.write_to_path(str(ca_file))
    ca.issue_cert("lakeward-client").private_key_and_cert_chain_pem.write_to_path(str(client_pem))
    log_path = root / "mongod.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(MongoServer.binary()), "--bind_ip", "127.0.0.1", "--port", str(port),
             "--dbpath", str(root / "data"), "--wiredTigerCacheSizeGB", "0.25",
             "--replSet", "rs0", "--tlsMode", "requireTLS",
             "--tlsCertificateKeyFile", str(server_pem), "--tlsCAFile", str(ca_file)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait_for_port(port, process, log_path, "TLS mongod")
        _initiate(port, ca_file, client_pem)
        yield TlsMongod(port=port, ca_file=ca_file, client_pem=client_pem)
    finally:
        stop_process(process)


def _initiate(port: int, ca_file: Path, client_pem: Path) -> None:
    from pymongo import MongoClient
    from pymongo.errors import OperationFailure

    with MongoClient(
        "localhost", port, directConnection=True, tls=True, tlsCAFile=str(ca_file),
        tlsCertificateKeyFile=str(client_pem), serverSelectionTimeoutMS=30_000,
    ) as client:  # fmt: skip
        with contextlib.suppress(OperationFailure):  # already initiated
            client.admin.command(
                "replSetInitiate",
                {"_id": "rs0", "members": [{"_id": 0, "host": f"localhost:{port}"}]},
            )
        deadline = time.monotonic() + 60
        while not client.admin.command("hello").get("isWritablePrimary"):
            assert time.monotonic() < deadline, "TLS mongod did not become PRIMARY"
            time.sleep(0.1)
        # Captures start at a wall-clock second (start_at): the oplog must reach back past the
        # second before "now", or a fresh set reports its history as lost.
        oplog = client.local["oplog.rs"]
        oldest = oplog.find().sort("$natural", 1).limit(1).next()["ts"].time
        while oplog.find().sort("$natural", -1).limit(1).next()["ts"].time < oldest + 2:
            assert time.monotonic() < deadline, "the TLS mongod's oplog did not grow"
            client.admin.command("appendOplogNote", data={"lakeward": "tick"})
            time.sleep(0.1)


@contextlib.contextmanager
def tls_terminating_proxy(
    upstream: tuple[str, int], server_context: ssl.SSLContext
) -> Iterator[int]:
    """A TCP proxy on a free loopback port that terminates TLS with `server_context` (mTLS when
    it requires client certificates) and forwards the plain bytes to `upstream`: how a test
    puts a TLS frontend in front of the Temporal dev server, which serves plaintext only.
    Yields the proxy's port; stops its thread at the end."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    port = free_port()
    stop = asyncio.Event()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_writer: asyncio.StreamWriter | None = None
        try:
            up_reader, up_writer = await asyncio.open_connection(*upstream)
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except (OSError, asyncio.CancelledError):
            pass  # a refused handshake, a closed upstream, or the proxy stopping
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.close()
                    with contextlib.suppress(Exception, asyncio.CancelledError):
                        await asyncio.wait_for(w.wait_closed(), 1)

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, ssl=server_context)
        ready.set()
        async with server:
            await stop.wait()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def run() -> None:
        loop.run_until_complete(serve())
        loop.close()

    thread = threading.Thread(target=run, name="tls-proxy", daemon=True)
    thread.start()
    assert ready.wait(30), "the TLS proxy did not start"
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)


def mtls_server_context(ca: trustme.CA, require_client_certificate: bool = True) -> ssl.SSLContext:
    """A server-side TLS context with a certificate for localhost / 127.0.0.1 signed by `ca`,
    speaking HTTP/2 (gRPC), verifying client certificates against `ca` when required."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    if require_client_certificate:
        ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    return context
