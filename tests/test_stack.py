"""The local stack: real servers as processes, idempotent up, data kept across down/up."""

from __future__ import annotations

import socket

import pytest
from pymongo import MongoClient

from lakeward.settings import StackSettings
from lakeward.stack import Stack, StackError
from lakeward.stack.servers import MongoServer


def test_up_twice_is_idempotent_and_keeps_the_same_processes(test_stack) -> None:
    settings = test_stack.need("mongo")
    stack = Stack(settings)
    server = stack.select()[0]
    pid_before = stack.process(server).read_pid()
    stack.up([server])
    assert stack.process(server).read_pid() == pid_before
    (row,) = stack.status([server])
    assert row.state == "running"
    assert row.version == "6.0.5"


def test_down_then_up_keeps_data(tmp_path, unique) -> None:
    settings = StackSettings(stack_dir=tmp_path / "stack", mongo_port=_free_port())
    stack = Stack(settings, servers=[MongoServer()])
    try:
        stack.up(stack.servers)
        with MongoClient(settings.mongo_uri) as client:
            client.keep.docs.insert_one({"_id": unique, "v": 1})
        assert stack.down() == ["mongo"]
        assert stack.status()[0].state == "stopped"
        stack.up(stack.servers)
        with MongoClient(settings.mongo_uri) as client:
            assert client.keep.docs.find_one({"_id": unique}) == {"_id": unique, "v": 1}
    finally:
        stack.down()


def test_taken_port_is_named_in_the_error(tmp_path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        stack = Stack(StackSettings(stack_dir=tmp_path, mongo_port=port), servers=[MongoServer()])
        with pytest.raises(StackError) as caught:
            stack.up(stack.servers)
    message = str(caught.value)
    assert f"port {port}" in message
    assert "LAKEWARD_MONGO_PORT" in message
    assert not stack.process(stack.servers[0]).is_running()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_missing_prerequisite_is_one_line_naming_the_install_command(tmp_path) -> None:
    """`lakeward stack up` without java on PATH: one line with the fix, no traceback."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    lakeward = Path(sys.executable).parent / "lakeward"
    env = {
        **os.environ,
        "PATH": str(tmp_path / "empty-bin"),  # no java, no mvn
        "LAKEWARD_STACK_DIR": str(tmp_path / "stack"),
        "LAKEWARD_LIB_DIR": str(tmp_path / "lib"),  # no jars either
        "LAKEWARD_MONGO_PORT": str(_free_port()),
        "LAKEWARD_KAFKA_PORT": str(_free_port()),
        "LAKEWARD_KAFKA_CONTROLLER_PORT": str(_free_port()),
    }
    result = subprocess.run(
        [str(lakeward), "stack", "up", "--with", "kafka"],
        capture_output=True, text=True, env=env, timeout=120,
        input="",
    )  # fmt: skip
    # mongo starts first and succeeds or fails on its own; kafka's check is what we look at.
    subprocess.run([str(lakeward), "stack", "down"], env=env, capture_output=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    error_lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(error_lines) == 1, result.stderr
    assert "java is not installed" in error_lines[0]
    assert "apt-get install -y openjdk-17-jre-headless" in error_lines[0]
