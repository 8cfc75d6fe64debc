"""The `debezium` strategy: config derivation (pure), the Connect client's error mapping (a fake
transport), and the connector's life cycle on the real Kafka Connect + Debezium of the stack."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import httpx
import pytest
from pymongo import MongoClient

from lakeward.debezium import (
    CLUSTER_TIME_STAGE,
    DEBEZIUM_MONGODB_CONNECTOR,
    ConnectClient,
    ConnectorConfigError,
    ConnectorFailedError,
    ConnectRequestError,
    ConnectUnavailableError,
    DebeziumCapture,
    DebeziumOptions,
    DebeziumProgress,
    Redactor,
    SourceUnreachableError,
    collection_include_list,
    connector_config,
    connector_name,
    delete_connector,
    resume_token_cluster_time,
)
from lakeward.events import make_seq
from lakeward.settings import StackSettings
from workflows.spec import PipelineSpec, SnapshotMode

MONGO = "mongodb://127.0.0.1:27017/?replicaSet=rs0"


def _spec(
    name: str = "orders",
    uri: str = MONGO,
    db: str = "shop",
    collections: tuple[str, ...] = ("orders", "payments"),
    **source: object,
) -> PipelineSpec:
    return PipelineSpec.model_validate(
        {
            "name": name,
            "source": {"uri": uri, "database": db, "collections": list(collections), **source},
            "batching": {"max_records": 500, "max_wait_ms": 100},
        }
    )


# ---- the derived config (pure) -------------------------------------------------------------


def test_config_writes_where_lakeward_capture_writes_exactly_once() -> None:
    config = connector_config(_spec(), MONGO, "lakeward", start_at=1_700_000_000.7)
    assert connector_name(_spec()) == "lakeward-orders"
    assert config["connector.class"] == DEBEZIUM_MONGODB_CONNECTOR
    assert config["mongodb.connection.string"] == MONGO
    assert config["topic.prefix"] == "lakeward"  # topics lakeward.shop.orders, as apply reads
    assert config["collection.include.list"] == (r"^(?-i)shop\.orders$,^(?-i)shop\.payments$")
    assert config["capture.mode"] == "change_streams_update_full"
    assert config["capture.mode.full.update.type"] == "lookup"
    assert config["snapshot.mode"] == "no_data"  # Lakeward's snapshot stage loads existing rows
    assert config["capture.start.op.time"] == str(1_700_000_000 << 32)
    assert config["exactly.once.support"] == "required"
    assert config["transaction.boundary"] == "poll"
    assert config["provide.transaction.metadata"] == "true"
    assert json.loads(config["cursor.pipeline"]) == CLUSTER_TIME_STAGE
    assert config["value.converter"] == "org.apache.kafka.connect.json.JsonConverter"
    assert config["value.converter.schemas.enable"] == "false"
    assert config["key.converter.schemas.enable"] == "false"
    assert (config["max.batch.size"], config["poll.interval.ms"]) == ("500", "100")
    assert int(config["max.queue.size"]) > int(config["max.batch.size"])
    assert all(isinstance(v, str) for v in config.values())


def test_config_follows_the_spec_options() -> None:
    pre = connector_config(_spec(pre_images=True, full_document="when_available"), MONGO, "p")
    assert pre["capture.mode"] == "change_streams_update_full_with_pre_image"
    assert pre["capture.mode.full.update.type"] == "post_image"
    assert "capture.start.op.time" not in pre
    for mode, expected in [(SnapshotMode.initial, "initial"), (SnapshotMode.never, "no_data"),
                           (SnapshotMode.when_needed, "when_needed"),
                           (SnapshotMode.always, "always")]:  # fmt: skip
        options = DebeziumOptions(snapshot_mode=mode)
        assert connector_config(_spec(), MONGO, "p", options=options)["snapshot.mode"] == expected
    tuned = DebeziumOptions(extra={"producer.override.compression.type": "zstd"})
    assert (
        connector_config(_spec(), MONGO, "p", options=tuned)["producer.override.compression.type"]
        == "zstd"
    )


def _unvalidated(**source: object) -> PipelineSpec:
    """A spec whose source fields skip validation (model_copy does not validate)."""
    spec = _spec()
    return spec.model_copy(update={"source": spec.source.model_copy(update=source)})


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        (_spec(full_document="required"), None, "'required' has no Debezium equivalent"),
        # The spec refuses such a name; the connector's own check stands behind it.
        (_unvalidated(collections=["orders", "a b"]), None, "not a valid Kafka topic name"),
        (_spec(), DebeziumOptions(extra={"topic.prefix": "x", "transforms": "t"}),
         "may not set topic.prefix, transforms"),
    ],
)  # fmt: skip
def test_what_debezium_cannot_do_is_a_config_error(spec, options, message) -> None:
    with pytest.raises(ConnectorConfigError, match=message) as caught:
        connector_config(spec, MONGO, "lakeward", options=options)
    assert not caught.value.retryable


def test_include_list_escapes_every_regex_character() -> None:
    assert collection_include_list("shop", ["orders.v2", "a-b"]) == (
        r"^(?-i)shop\.orders\.v2$,^(?-i)shop\.a\-b$"
    )


def test_redactor_hides_the_uri_its_password_and_user_info() -> None:
    redact = Redactor(["mongodb://app:p%40ss@db1:27017/?replicaSet=rs0"])
    text = "bad mongodb://app:p%40ss@db1:27017/?replicaSet=rs0 and p@ss and app:p%40ss"
    assert redact(text) == "bad *** and *** and ***"


def test_resume_token_gives_the_cluster_time_of_the_offsets() -> None:
    # A token from a real Debezium offset: {"_data": "826B0871EE00000005..."}.
    token = "LwAAAAJfZGF0YQAfAAAAODI2QjA4NzFFRTAwMDAwMDA1MkIwMjI5Mjk2RTA0AAA="
    assert resume_token_cluster_time(token) == (0x6B0871EE, 5)
    assert resume_token_cluster_time("not base64 bson") is None


# ---- the Connect client's error mapping (fake transport) -----------------------------------


def _client(
    handler: Callable[[httpx.Request], httpx.Response], secret: str = MONGO
) -> ConnectClient:
    return ConnectClient(
        "http://127.0.0.1:1", secrets=[secret], transport=httpx.MockTransport(handler)
    )


async def test_unreachable_connect_is_a_retryable_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    async with _client(refuse) as client:
        with pytest.raises(ConnectUnavailableError, match="did not answer GET") as caught:
            await client.status("lakeward-orders")
    assert caught.value.retryable


@pytest.mark.parametrize(
    ("status", "error", "retryable"),
    [(409, ConnectUnavailableError, True), (500, ConnectUnavailableError, True),
     (503, ConnectUnavailableError, True), (400, ConnectorConfigError, False),
     (401, ConnectRequestError, False), (405, ConnectRequestError, False)],
)  # fmt: skip
async def test_connect_answers_map_to_retryable_or_terminal_errors(
    status, error, retryable
) -> None:
    secret = "mongodb://app:hunter22@db1/?replicaSet=rs0"

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error_code": status, "message": f"no: {secret}"})

    async with _client(answer, secret) as client:
        with pytest.raises(error) as caught:
            await client.put_connector_config("c", {"connector.class": "x"})
    assert caught.value.retryable is retryable
    assert "hunter22" not in str(caught.value) and str(status) in str(caught.value)


async def test_missing_connector_reads_as_none() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error_code": 404, "message": "Connector c not found"})

    async with _client(answer) as client:
        assert await client.status("c") is None
        assert await client.connector_config("c") is None
        assert await client.delete("c") is False


class _FakeConnect:
    """A Connect worker whose only connector's task fails, is restarted, and fails again."""

    def __init__(self, trace: str) -> None:
        self.trace = trace
        self.restarts = 0
        self.config: dict | None = None
        self.polls_after_restart = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/config/validate"):
            return httpx.Response(200, json={"error_count": 0, "configs": []})
        if path.endswith("/config") and request.method == "GET":
            return httpx.Response(404, json={"message": "not found"})
        if path.endswith("/config"):
            self.config = json.loads(request.content)
            return httpx.Response(201, json={"name": "c", "config": self.config})
        if path.endswith("/offsets"):
            return httpx.Response(200, json={"offsets": []})
        if path.endswith("/restart"):
            self.restarts += 1
            self.polls_after_restart = 0
            return httpx.Response(202, json={})
        if path.endswith("/status"):
            state = "FAILED"
            if self.restarts:
                self.polls_after_restart += 1
                state = "RESTARTING" if self.polls_after_restart == 1 else "FAILED"
            task = {"id": 0, "state": state, "worker_id": "w"}
            if state == "FAILED":
                task["trace"] = self.trace
            return httpx.Response(200, json={"name": "c", "connector": {"state": "RUNNING"},
                                             "tasks": [task]})  # fmt: skip
        return httpx.Response(405, json={"message": f"unexpected {request.method} {path}"})


async def test_failed_task_is_restarted_once_then_reported() -> None:
    uri = "mongodb://app:hunter22@db1/?replicaSet=rs0"
    trace = (
        f"org.apache.kafka.connect.errors.ConnectException: boom for {uri}\n\tat a.b(C.java:1)\n"
        "Caused by: org.apache.kafka.common.errors.RecordTooLargeException: too big\n"
    )
    fake = _FakeConnect(trace)
    capture = DebeziumCapture(
        _spec(), uri, "127.0.0.1:1", "lakeward", connect_url="http://127.0.0.1:1",
        poll_s=0.01, transport=httpx.MockTransport(fake),
    )  # fmt: skip
    capture._ensure_topics = lambda: None  # type: ignore[method-assign]
    seen: list[DebeziumProgress] = []
    with pytest.raises(ConnectorFailedError) as caught:
        await capture.run(seen.append)
    assert fake.restarts == 1
    message = str(caught.value)
    assert "task 0 FAILED again after one automatic restart" in message
    assert "ConnectException: boom" in message and "RecordTooLargeException: too big" in message
    assert "hunter22" not in message and "hunter22" not in caught.value.trace
    assert not caught.value.retryable
    assert fake.config is not None and fake.config["mongodb.connection.string"] == uri
    assert seen and seen[-1].restarts == 1


class _FlakyConnect(_FakeConnect):
    """A Connect worker that stops answering status requests once the connector exists."""

    status_calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/status"):
            self.status_calls += 1
            if self.status_calls > 1:  # the first one is the check for a paused connector
                raise httpx.ConnectError("Connection refused", request=request)
            return httpx.Response(200, json={"name": "c", "connector": {"state": "RUNNING"},
                                             "tasks": []})  # fmt: skip
        return super().__call__(request)


async def test_connect_going_away_is_tolerated_for_a_grace_period_then_raised() -> None:
    capture = DebeziumCapture(
        _spec(), MONGO, "127.0.0.1:1", "lakeward", connect_url="http://127.0.0.1:1",
        poll_s=0.01, unavailable_grace_s=0.2, transport=httpx.MockTransport(_FlakyConnect("")),
    )  # fmt: skip
    capture._ensure_topics = lambda: None  # type: ignore[method-assign]
    seen: list[DebeziumProgress] = []
    with pytest.raises(ConnectUnavailableError) as caught:
        await capture.run(seen.append)
    assert caught.value.retryable
    assert len(seen) > 1 and not seen[-1].connect_reachable


class _VanishingConnect(_FakeConnect):
    """A connector someone deletes right after Lakeward created it."""

    puts = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/config") and request.method == "PUT":
            self.puts += 1
        if path.endswith("/status"):
            if self.puts < 2:
                return httpx.Response(404, json={"message": "not found"})
            return httpx.Response(200, json={"name": "c", "connector": {"state": "RUNNING"},
                                             "tasks": [{"id": 0, "state": "RUNNING"}]})  # fmt: skip
        return super().__call__(request)


async def test_a_connector_deleted_behind_lakewards_back_is_created_again() -> None:
    fake = _VanishingConnect("")
    capture = DebeziumCapture(
        _spec(), MONGO, "127.0.0.1:1", "lakeward", connect_url="http://127.0.0.1:1",
        poll_s=0.01, transport=httpx.MockTransport(fake),
    )  # fmt: skip
    capture._ensure_topics = lambda: None  # type: ignore[method-assign]
    seen: list[DebeziumProgress] = []
    progress = await capture.run(seen.append, lambda: bool(seen) and seen[-1].task_states != {})
    assert fake.puts == 2
    assert progress.task_states == {"0": "RUNNING"}


# ---- the real Kafka Connect + Debezium of the local stack ----------------------------------

slow = pytest.mark.slow


@pytest.fixture(scope="module")
def connect_stack(test_stack) -> StackSettings:
    return test_stack.need("mongo", "kafka", "connect")


def _url(settings: StackSettings) -> str:
    return f"http://{settings.host}:{settings.connect_port}"


def _capture(settings: StackSettings, spec: PipelineSpec, prefix: str, **kwargs) -> DebeziumCapture:
    kwargs.setdefault("poll_s", 0.5)
    return DebeziumCapture(
        spec, spec.source.uri, settings.kafka_bootstrap, prefix, connect_url=_url(settings),
        start_at=time.time() - 1, **kwargs,
    )  # fmt: skip


async def _wait_for(predicate: Callable[[], object], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.25)


@slow
async def test_connector_is_created_once_and_updated_only_when_the_config_changes(
    connect_stack, unique
) -> None:
    spec = _spec(f"dbz-{unique}", connect_stack.mongo_uri, f"dbz_{unique}", ("orders",))
    capture = _capture(connect_stack, spec, f"dbz{unique}")
    try:
        async with capture.client() as client:
            assert await capture.ensure_connector(client) == "created"
            assert await capture.ensure_connector(client) == "unchanged"
            stored = await client.connector_config(capture.name)
            assert stored is not None and stored["topic.prefix"] == f"dbz{unique}"
            tuned = _capture(connect_stack, spec, f"dbz{unique}",
                             options=DebeziumOptions(heartbeat_interval_ms=7000))  # fmt: skip
            tuned._start_at = capture._start_at
            assert await tuned.ensure_connector(client) == "updated"
            assert (await client.connector_config(capture.name) or {})[
                "heartbeat.interval.ms"
            ] == "7000"
    finally:
        assert await capture.delete_connector()
    assert not await capture.delete_connector()


@slow
async def test_supervision_reports_running_and_leaves_the_connector_running(
    connect_stack, unique
) -> None:
    db = f"dbz_{unique}"
    spec = _spec(f"dbz-{unique}", connect_stack.mongo_uri, db, ("orders",))
    capture = _capture(connect_stack, spec, f"dbz{unique}")
    seen: list[DebeziumProgress] = []

    def running() -> bool:
        return bool(seen) and seen[-1].task_states == {"0": "RUNNING"}

    try:
        with MongoClient(connect_stack.mongo_uri) as mongo:
            task = asyncio.create_task(capture.run(seen.append, running))
            progress = await asyncio.wait_for(task, 90)
            assert progress.connector_state == "RUNNING"
            assert progress.config_action == "created" and not progress.resumed_from_checkpoint
            # Only the listed collection is captured: not one differing in case, nor a prefix.
            for coll in ("orders", "ORDERS", "orders_archive"):
                mongo[db][coll].insert_one({"_id": 1, "n": 1})

            # A second run finds the connector running and its offsets advancing.
            again: list[DebeziumProgress] = []

            def caught_up() -> bool:
                return bool(again) and again[-1].last_seq >= make_seq(int(time.time()) - 60, 0, 0)

            capture._offsets_every_s = 0.0
            # Connect commits source offsets on its own schedule: wait until it has, so the
            # second run has a checkpoint to resume from (a condition, not a guessed sleep).
            async with capture.client() as client:
                for _ in range(600):
                    if await client.offsets(capture.name):
                        break
                    await asyncio.sleep(0.1)
            second = await asyncio.wait_for(capture.run(again.append, caught_up), 90)
            assert second.config_action == "unchanged"
            assert second.resumed_from_checkpoint
            # Cancelled (pause, worker shutdown): the connector keeps capturing into Kafka.
            cancelled: list[DebeziumProgress] = []
            task = asyncio.create_task(capture.run(cancelled.append))
            await _wait_for(lambda: cancelled)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            async with capture.client() as client:
                status = await client.status(capture.name)
            assert status is not None and status.is_running
            from confluent_kafka.admin import AdminClient

            topics = (
                AdminClient({"bootstrap.servers": connect_stack.kafka_bootstrap})
                .list_topics(timeout=10)
                .topics
            )
            assert f"dbz{unique}.{db}.orders" in topics
            assert f"dbz{unique}.{db}.ORDERS" not in topics
            assert f"dbz{unique}.{db}.orders_archive" not in topics
            mongo.drop_database(db)
    finally:
        await delete_connector(_url(connect_stack), spec)


@slow
async def test_bad_config_is_a_terminal_error_naming_the_field(connect_stack, unique) -> None:
    spec = _spec(f"dbz-{unique}", connect_stack.mongo_uri, f"dbz_{unique}", ("orders",))
    capture = _capture(connect_stack, spec, f"dbz{unique}",
                       options=DebeziumOptions(extra={"poll.interval.ms": "soon"}))  # fmt: skip
    with pytest.raises(ConnectorConfigError) as caught:
        await capture.run(lambda p: None)
    assert not caught.value.retryable
    assert any(m.startswith("poll.interval.ms: ") for m in caught.value.messages)
    assert "poll.interval.ms" in str(caught.value)
    async with capture.client() as client:
        assert await client.connector_config(capture.name) is None  # nothing was created


@slow
async def test_refused_credentials_never_show_the_password(connect_stack, unique) -> None:
    port = connect_stack.mongo_port
    uri = f"mongodb://lakeward:s3cret-pw@127.0.0.1:{port}/?replicaSet=rs0&authSource=admin"
    spec = _spec(f"dbz-{unique}", "mongodb://127.0.0.1/?replicaSet=rs0", f"dbz_{unique}")
    capture = DebeziumCapture(spec, uri, connect_stack.kafka_bootstrap, f"dbz{unique}",
                              connect_url=_url(connect_stack))  # fmt: skip
    with pytest.raises((ConnectorConfigError, SourceUnreachableError)) as caught:
        await capture.run(lambda p: None)
    assert "mongodb.connection.string" in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)


@slow
async def test_failed_task_is_restarted_once_then_fails_the_capture(connect_stack, unique) -> None:
    """A change too large for the producer fails the task, which a restart cannot fix."""
    db = f"dbz_{unique}"
    spec = _spec(f"dbz-{unique}", connect_stack.mongo_uri, db, ("orders",))
    options = DebeziumOptions(
        heartbeat_interval_ms=1000, extra={"producer.override.max.request.size": "300"}
    )
    capture = _capture(connect_stack, spec, f"dbz{unique}", options=options)
    seen: list[DebeziumProgress] = []
    try:
        with MongoClient(connect_stack.mongo_uri) as mongo:
            mongo[db].orders.insert_one({"_id": 1, "pad": "x" * 1000})
            with pytest.raises(ConnectorFailedError) as caught:
                await asyncio.wait_for(capture.run(seen.append), 120)
            mongo.drop_database(db)
    finally:
        await capture.delete_connector()
    assert seen[-1].restarts == 1
    assert "task 0 FAILED again after one automatic restart" in str(caught.value)
    assert "RecordTooLargeException" in str(caught.value)
    assert caught.value.task == 0 and not caught.value.retryable
