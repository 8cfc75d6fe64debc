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
