"""Shared fixtures: a real local stack for the tests, on its own ports and folder.

The test stack never touches the development stack: its ports are the defaults shifted by
LAKEWARD_TEST_PORT_OFFSET (10000 unless set) and its data lives in .lakeward/test-stack-<offset>.
Servers the session starts are stopped at its end; servers already running are reused and left.

With LAKEWARD_STACK=docker (a machine with a Docker engine), the same fixtures start the services
of compose.yaml through testcontainers instead, on the compose ports (the stack defaults).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lakeward.settings import StackSettings
from lakeward.stack import Stack

REPO = Path(__file__).resolve().parent.parent


def _test_settings() -> StackSettings:
    offset = int(os.environ.get("LAKEWARD_TEST_PORT_OFFSET", "10000"))
    # Shift the documented defaults, not whatever the developer's environment overrides.
    ports = {
        name: field.default + offset
        for name, field in StackSettings.model_fields.items()
        if name.endswith("_port")
    }
    return StackSettings(stack_dir=REPO / ".lakeward" / f"test-stack-{offset}", **ports)


class TestStack:
    """Starts servers on demand and remembers which ones this session started."""

    def __init__(self) -> None:
        self.settings = _test_settings()
        self.stack = Stack(self.settings)
        self.started: list[str] = []

    def need(self, *names: str) -> StackSettings:
        """Make sure the named servers run; returns the settings that address them."""
        servers = [s for s in self.stack.servers if s.name in names]
        missing = set(names) - {s.name for s in servers}
        assert not missing, f"unknown servers {missing}"
        before = {s.name for s in servers if self.stack.process(s).is_running()}
        self.stack.up(servers)
        self.started += [s.name for s in servers if s.name not in before]
        return self.settings

    def stop_started(self) -> None:
        if os.environ.get("LAKEWARD_TEST_KEEP_STACK") == "1":
            return
        self.stack.down([s for s in self.stack.servers if s.name in self.started])


#: Local-stack server -> the compose.yaml services that provide it.
COMPOSE_SERVICES = {
    "mongo": ["mongo"],
    "kafka": ["kafka"],
    "temporal": ["temporal", "temporal-init", "temporal-ui"],
    "s3": ["minio", "minio-init"],
    "vault": ["vault"],
    "prometheus": ["prometheus"],
    "connect": ["connect"],
}


class DockerTestStack:
    """The same contract as TestStack, served by compose.yaml through testcontainers."""

    def __init__(self) -> None:
        from testcontainers.compose import DockerCompose

        self.settings = StackSettings(stack_dir=REPO / ".lakeward" / "test-stack-docker")
        self._compose_class = DockerCompose
        self._running: list[object] = []
        self._names: set[str] = set()

    def need(self, *names: str) -> StackSettings:
        wanted = [n for n in names if n not in self._names]
        if wanted:
            services = [svc for n in wanted for svc in COMPOSE_SERVICES[n]]
            compose = self._compose_class(
                context=REPO,
                compose_file_name="compose.yaml",
                env_file=str(REPO / "docker" / ".env.example"),
                services=services,
                profiles=["observability", "security"],
                wait=True,
            )
            compose.start()
            self._running.append(compose)
            self._names.update(wanted)
        return self.settings

    def stop_started(self) -> None:
        for compose in reversed(self._running):
            compose.stop()  # type: ignore[attr-defined]


def _docker_engine_problem() -> str | None:
    import subprocess

    try:
        probe = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if probe.returncode == 0 else probe.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def test_stack() -> Iterator[TestStack | DockerTestStack]:
    stack: TestStack | DockerTestStack
    if os.environ.get("LAKEWARD_STACK", "local") == "docker":
        problem = _docker_engine_problem()
        if problem:
            pytest.exit(f"LAKEWARD_STACK=docker but no Docker engine answers: {problem}", 2)
        stack = DockerTestStack()
    else:
        stack = TestStack()
    try:
        yield stack
    finally:
        stack.stop_started()


@pytest.fixture(scope="session")
def mongo(test_stack: TestStack) -> StackSettings:
    return test_stack.need("mongo")


@pytest.fixture(scope="session")
def kafka(test_stack: TestStack) -> StackSettings:
    return test_stack.need("kafka")


@pytest.fixture(scope="session")
def temporal(test_stack: TestStack) -> StackSettings:
    return test_stack.need("temporal")


@pytest.fixture(scope="session")
def core_stack(test_stack: TestStack) -> StackSettings:
    return test_stack.need("mongo", "kafka", "temporal")


@pytest.fixture
def unique() -> str:
    """A short unique suffix for names (databases, topics, task queues, table paths)."""
    return uuid.uuid4().hex[:10]
