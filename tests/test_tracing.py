"""Tracing and structured logs (docs/observability.md).

Pure parts first (the rate-limiting sampler on a fake clock, redaction, the log line's fields),
then one pipeline run through the real stack, shared by the tests below it: an API call with a
caller's W3C `traceparent` starts it, a change flows MongoDB -> capture -> Kafka -> apply ->
Delta, and an API call stops it. Spans go to the SDK's in-memory exporter; log lines to a
buffer in the JSON format `lakeward worker` writes. The Mongo URI carries a password that must
never show up in a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import io
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, Decision, ParentBased
from opentelemetry.trace import SpanKind
from pydantic import SecretStr
from pymongo import MongoClient
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError
from typer.testing import CliRunner

from api.app import create_app
from lakeward import tracing
from lakeward.cli import app as cli
from lakeward.logs import REDACTED, Summary, bind, configure_logging, redact
from lakeward.settings import Settings
from lakeward.tracing import RateLimitingSampler, root_sampler
from tests.test_slice import _eventually, _lake_rows
from workers.main import build_workers, connect

ADMIN_TOKEN = "lwt_tracing-test-admin"
TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
CALLER_SPAN_ID = 0xB7AD6B7169203331
TRACEPARENT = f"00-{TRACE_ID:032x}-{CALLER_SPAN_ID:016x}-01"


# --- pure ---------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _kept(sampler: Any, n: int, parent: Any = None) -> int:
    decisions = [
        sampler.should_sample(parent, trace_id=i + 1, name="batch").decision for i in range(n)
    ]
    return sum(d is Decision.RECORD_AND_SAMPLE for d in decisions)


def test_rate_limiting_sampler_keeps_at_most_n_traces_per_second() -> None:
    clock = FakeClock()
    sampler = RateLimitingSampler(5, clock=clock)
    assert _kept(sampler, 20) == 5  # a burst takes one second's worth
    clock.now += 0.2
    assert _kept(sampler, 20) == 1  # 0.2 s refills one
    clock.now += 60
    assert _kept(sampler, 20) == 5  # an idle minute does not bank 300
    clock.now += 0.1
    assert _kept(sampler, 20) == 0  # half a token is not a trace

    slow = RateLimitingSampler(0.5, clock=clock)  # one trace every two seconds
    assert _kept(slow, 3) == 1
    clock.now += 1
    assert _kept(slow, 3) == 0
    clock.now += 1
    assert _kept(slow, 3) == 1


def test_the_ratio_decides_before_the_rate_limit_and_children_follow_their_parent() -> None:
    clock = FakeClock()
    never = RateLimitingSampler(100, then=ALWAYS_OFF, clock=clock)
    assert _kept(never, 10) == 0
    assert never._tokens == 100  # dropped by the ratio: no token spent

    limited = ParentBased(RateLimitingSampler(1, clock=clock))
    assert _kept(limited, 5) == 1
    sampled_parent = trace.set_span_in_context(
        trace.NonRecordingSpan(
            trace.SpanContext(TRACE_ID, CALLER_SPAN_ID, True, trace.TraceFlags(1))
        )
    )
    assert _kept(limited, 5, sampled_parent) == 5  # a kept trace stays whole

    assert (
        "RateLimitingSampler" in root_sampler(Settings(traces_rate_limit_per_s=3)).get_description()
    )
    assert "RateLimitingSampler" not in root_sampler(Settings()).get_description()


def test_redaction_masks_uri_passwords_secret_fields_and_tokens() -> None:
    uri = "mongodb://app:pa55w@rd@db-1:27017/?replicaSet=rs0&authSource=admin"
    assert redact(uri) == f"mongodb://app:{REDACTED}@db-1:27017/?replicaSet=rs0&authSource=admin"
    assert redact("s3://k:v@bucket/x?X-Amz-Signature=abc&a=1") == (
        f"s3://k:{REDACTED}@bucket/x?X-Amz-Signature={REDACTED}&a=1"
    )
    assert redact("Authorization: Bearer lwt_abc.def") == f"Authorization: Bearer {REDACTED}"
    assert redact("token lwt_abcdef used") == f"token {REDACTED} used"
    masked = f"AWS_SECRET_ACCESS_KEY={REDACTED}, region=eu"
    assert redact("AWS_SECRET_ACCESS_KEY=xyz, region=eu") == masked
    nested = {"sink": {"storage_options": {"AWS_SECRET_ACCESS_KEY": "xyz", "AWS_REGION": "eu"}}}
    assert redact(nested) == {
        "sink": {"storage_options": {"AWS_SECRET_ACCESS_KEY": REDACTED, "AWS_REGION": "eu"}}
    }
    assert redact("resume token {'_data': '8263'}") == "resume token {'_data': '8263'}"


def test_otlp_export_posts_spans_to_the_configured_endpoint() -> None:
    received: list[tuple[str, str, bytes]] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_port}/collector/v1/traces"
        provider = tracing.tracer_provider(
            Settings(traces_exporter="otlp", traces_otlp_endpoint=endpoint), "lakeward-test"
        )
        assert provider is not None
        provider.get_tracer("t").start_span("exported").end()
        assert provider.force_flush(10_000)
        provider.shutdown()
    finally:
        server.shutdown()
        server.server_close()
    [(path, content_type, body)] = received
    assert path == "/collector/v1/traces" and content_type == "application/x-protobuf"
    assert b"exported" in body and b"lakeward-test" in body  # the span and the service name


def test_a_log_line_is_one_json_object_with_context_and_trace_ids() -> None:
    buffer = io.StringIO()
    handler = configure_logging("worker", "json", "info", stream=buffer)
    provider = TracerProvider()
    try:
        log = logging.getLogger("lakeward.apply")

        async def in_a_task() -> None:
            bind(pipeline="orders-sync", collection="orders")
            with provider.get_tracer("t").start_as_current_span("batch") as span:
                log.warning(
                    "commit of %s failed",
                    "mongodb://u:hunter2@h/",
                    extra={"api_token": "hunter2", "delta_version": 7},
                )
                return span.get_span_context()

        context = asyncio.run(in_a_task())
        log.info("outside the task")
    finally:
        logging.getLogger().removeHandler(handler)
    first, second = (json.loads(line) for line in buffer.getvalue().splitlines())
    assert first["level"] == "warning"
    assert first["component"] == "apply"  # from the logger's name
    assert first["pipeline"] == "orders-sync" and first["collection"] == "orders"
    assert first["trace_id"] == f"{context.trace_id:032x}"
    assert first["span_id"] == f"{context.span_id:016x}"
    assert first["message"] == f"commit of mongodb://u:{REDACTED}@h/ failed"
    assert first["api_token"] == REDACTED and first["delta_version"] == 7
    assert first["timestamp"].endswith("Z")
    assert "hunter2" not in buffer.getvalue()
    # The task's bindings and span ended with it.
    assert "pipeline" not in second and "trace_id" not in second


def test_progress_is_summed_and_logged_once_per_interval() -> None:
    clock = FakeClock()
    records: list[logging.LogRecord] = []
    logger = logging.getLogger("test.summary")
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        summary = Summary(logger, "apply progress", interval_s=60, clock=clock)
        for _ in range(150):  # 75 s of batches, one every 0.5 s
            clock.now += 0.5
            summary.add(batches=1, records=10)
    finally:
        logger.removeHandler(handler)
    assert len(records) == 1  # at 60 s, for the 120 batches so far; the next line at 120 s
    assert (records[0].batches, records[0].records, records[0].interval_s) == (120, 1200, 60.0)


def test_the_cli_takes_a_log_format_for_itself_and_what_it_starts(monkeypatch) -> None:
    monkeypatch.setenv("LAKEWARD_LOG_FORMAT", "json")  # restored after the test
    root = logging.getLogger()
    before = list(root.handlers)
    try:
        result = CliRunner().invoke(cli, ["--log-format", "console", "token", "--help"])
        assert result.exit_code == 0, result.output
        assert os.environ["LAKEWARD_LOG_FORMAT"] == "console"
        assert Settings().log_format == "console"
        refused = CliRunner().invoke(cli, ["--log-format", "xml", "token", "--help"])
        assert refused.exit_code != 0 and "json or console" in refused.output
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)


# --- one pipeline through the real stack --------------------------------------------------------


@dataclass
class TracedRun:
    spans: list[ReadableSpan]
    log_lines: list[dict[str, Any]]
    log_text: str
    password: str
    pipeline: str
    collection: str
    headers: list[list[tuple[str, bytes]]]  # of the records in the data topic
    marker: str  # a document value that must not reach any span


@pytest.fixture(scope="module")
async def traced_run(core_stack, tmp_path_factory) -> AsyncIterator[TracedRun]:
    unique = uuid.uuid4().hex[:8]
    tmp = tmp_path_factory.mktemp("tracing")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    buffer = io.StringIO()
    handler = configure_logging("worker", "json", "info", stream=buffer)
    logging.getLogger("lakeward").setLevel(logging.DEBUG)  # "batch committed" lines too

    settings = Settings(
        temporal_address=core_stack.temporal_address,
        kafka_bootstrap=core_stack.kafka_bootstrap,
        task_queue=f"wf-{unique}",
        io_task_queue=f"io-{unique}",
        cpu_task_queue=f"cpu-{unique}",
        topic_prefix=f"t{unique}",
        admin_token=SecretStr(ADMIN_TOKEN),
        api_tokens_file=tmp / "api-tokens.json",
        audit_log=tmp / "audit.log",
        payload_key_file=tmp / "payload.key",
    )
    # A real user and password: mongod checks them even with authorization off.
    user, password = f"tr_{unique}", f"Pw-{unique}-never-logged"
    db, name, collection = f"tr_{unique}", f"tr-{unique}", "orders"
    host = core_stack.mongo_uri.removeprefix("mongodb://")
    # A spec refuses a password in its URI: it names a secret, which the worker resolves.
    uri_variable = f"LAKEWARD_TEST_MONGO_URI_{unique.upper()}"
    os.environ[uri_variable] = f"mongodb://{user}:{password}@{host}&authSource=admin"
    marker = f"content-{unique}"
    mongo = MongoClient(core_stack.mongo_uri)
    mongo.admin.command("createUser", user, pwd=password, roles=["root"])

    client = await connect(settings, tracing=provider)
    executor = ThreadPoolExecutor(settings.io_max_concurrent)
    workers, activities = build_workers(client, settings, executor)
    runs = [asyncio.create_task(w.run()) for w in workers]
    app = create_app(settings, tracing=provider)  # no client: its lifespan connects its own
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://lakeward",
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            ) as http,
        ):
            spec = {
                "name": name,
                "source": {
                    "uri": f"env:{uri_variable}",
                    "database": db,
                    "collections": [collection],
                },
                "sink": {"uri": str(tmp / "lake")},
                # Stream only: every record then comes from capture (snapshot batches are
                # traced the same way, as "snapshot batch").
                "snapshot": {"mode": "never"},
            }
            created = await http.post(
                "/v1/pipelines", json=spec, headers={"traceparent": TRACEPARENT}
            )
            assert created.status_code == 201, created.text
            table_uri = created.json()["tables"][f"{db}.{collection}"]
            docs = [{"_id": i, "note": marker} for i in range(20)]
            mongo[db][collection].insert_many(docs)
            await _eventually(lambda: len(_lake_rows(table_uri)) == 20, timeout=180)

            def applied() -> bool:
                return any(s.name == "apply batch" for s in exporter.get_finished_spans())

            await _eventually(applied, timeout=60)
            stopped = await http.delete(f"/v1/pipelines/{name}")
            assert stopped.status_code == 202, stopped.text
            deadline = time.monotonic() + 120
            while (await http.get(f"/v1/pipelines/{name}")).json()["state"] != "STOPPED":
                assert time.monotonic() < deadline, "the pipeline did not stop"
                await asyncio.sleep(0.25)

            def capture_ended() -> bool:
                names = {s.name for s in exporter.get_finished_spans()}
                return "RunActivity:capture_changes" in names

            await _eventually(capture_ended, timeout=60)
        headers = await asyncio.to_thread(
            _record_headers, settings.kafka_bootstrap, f"{settings.topic_prefix}.{db}.{collection}"
        )
        text = buffer.getvalue()
        yield TracedRun(
            spans=list(exporter.get_finished_spans()),
            log_lines=[json.loads(line) for line in text.splitlines()],
            log_text=text,
            password=password,
            pipeline=name,
            collection=collection,
            headers=headers,
            marker=marker,
        )
    finally:
        async for execution in client.list_workflows(f"TaskQueue = 'wf-{unique}'"):
            if execution.status == WorkflowExecutionStatus.RUNNING:
                with contextlib.suppress(RPCError):
                    await client.get_workflow_handle(execution.id).terminate("test over")
        await asyncio.gather(*(w.shutdown() for w in workers))
        await asyncio.gather(*runs, return_exceptions=True)
        activities.close()
        executor.shutdown(wait=False)
        tracing.install(None)
        os.environ.pop(uri_variable, None)
        logging.getLogger().removeHandler(handler)
        logging.getLogger("lakeward").setLevel(logging.NOTSET)
        with contextlib.suppress(Exception):
            mongo.admin.command("dropUser", user)
        mongo.close()


def _record_headers(bootstrap: str, topic: str) -> list[list[tuple[str, bytes]]]:
    """The headers of every committed record in the topic (an independent consumer)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        found: list[list[tuple[str, bytes]]] = []
        deadline = time.monotonic() + 30
        while len(found) < 20 and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                found.append(list(message.headers() or []))
        return found
    finally:
        consumer.close()


def _index(spans: list[ReadableSpan]) -> tuple[dict[str, list[ReadableSpan]], dict[int, Any]]:
    by_name: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    return by_name, {s.context.span_id: s for s in spans}


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_an_api_call_is_one_trace_through_the_workflow_and_its_activities(
    traced_run: TracedRun,
) -> None:
    by_name, by_id = _index(traced_run.spans)

    def parent(span: ReadableSpan) -> ReadableSpan:
        assert span.parent is not None, f"{span.name} has no parent"
        return by_id[span.parent.span_id]

    # The API's server span joins the caller's trace (W3C traceparent) ...
    [post] = by_name["POST /v1/pipelines"]
    assert post.kind is SpanKind.SERVER
    assert post.context.trace_id == TRACE_ID
    assert post.parent is not None and post.parent.span_id == CALLER_SPAN_ID
    assert post.parent.is_remote
    assert post.attributes["http.route"] == "/v1/pipelines"
    assert post.attributes["http.response.status_code"] == 201
    # ... and is the parent of the Temporal client's start, which the workflow and its
    # activities hang off (TracingInterceptor's shape).
    [start] = by_name["StartWorkflow:PipelineWorkflow"]
    assert parent(start) is post
    [run] = by_name["RunWorkflow:PipelineWorkflow"]
    assert parent(run) is start
    for activity in ("capture_changes", "apply_batch"):
        ran = by_name[f"RunActivity:{activity}"][0]
        assert parent(ran).name == f"StartActivity:{activity}"
        assert parent(parent(ran)) is start
    # Everything the start set going is in the caller's trace (the status queries and the stop
    # below are requests of their own).
    started = ("StartWorkflow:", "RunWorkflow:", "StartActivity:", "RunActivity:")
    run_spans = [s for s in traced_run.spans if s.name.startswith(started)]
    assert {s.context.trace_id for s in run_spans} == {TRACE_ID}

    # The stop through the API: its own trace, its signal a child of its request span.
    [delete] = by_name["DELETE /v1/pipelines/{name}"]
    [signal] = by_name["SignalWorkflow:stop"]
    assert parent(signal) is delete
    assert "/metrics" not in {s.attributes.get("url.path") for s in traced_run.spans}


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_a_micro_batch_is_one_trace_from_capture_through_kafka_to_the_delta_commit(
    traced_run: TracedRun,
) -> None:
    by_name, _ = _index(traced_run.spans)
    captures = {s.context.span_id: s for s in by_name["capture batch"]}
    applies = by_name["apply batch"]
    [run_capture] = by_name["RunActivity:capture_changes"]
    run_applies = {s.context.span_id for s in by_name["RunActivity:apply_batch"]}

    # Capture: each batch a trace of its own, linked to the capture activity.
    for capture in captures.values():
        assert capture.parent is None and capture.kind is SpanKind.PRODUCER
        assert [link.context.span_id for link in capture.links] == [run_capture.context.span_id]
        assert capture.attributes["lakeward.pipeline"] == traced_run.pipeline
    assert sum(c.attributes["lakeward.records"] for c in captures.values()) >= 20

    # Kafka: every record of a batch carries its batch's W3C trace context.
    assert len(traced_run.headers) == 20
    for headers in traced_run.headers:
        [traceparent] = [v.decode() for k, v in headers if k == "traceparent"]
        _, trace_id, span_id, flags = traceparent.split("-")
        assert int(span_id, 16) in captures
        assert int(trace_id, 16) == captures[int(span_id, 16)].context.trace_id
        assert int(flags, 16) & 1  # sampled

    # Apply: a child of the capture batch it read (from those headers), linked to its activity,
    # ending at the Delta commit.
    applied = 0
    for apply in applies:
        assert apply.parent is not None and apply.parent.is_remote
        capture = captures[apply.parent.span_id]
        assert apply.context.trace_id == capture.context.trace_id
        assert apply.kind is SpanKind.CONSUMER
        assert {link.context.span_id for link in apply.links} & run_applies
        attributes = apply.attributes
        assert attributes["lakeward.pipeline"] == traced_run.pipeline
        assert attributes["lakeward.collection"] == traced_run.collection
        assert isinstance(attributes["lakeward.delta_version"], int)
        applied += attributes["lakeward.applied"]
    assert applied >= 20
    # Never document content in a span.
    for span in traced_run.spans:
        assert traced_run.marker not in json.dumps(dict(span.attributes or {}), default=str)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_worker_log_lines_name_pipeline_collection_and_trace_but_no_secret(
    traced_run: TracedRun,
) -> None:
    assert traced_run.password not in traced_run.log_text
    lines = traced_run.log_lines
    fields = {"timestamp", "level", "component", "message"}
    assert lines and all(fields <= set(line) for line in lines)

    [started] = [line for line in lines if line["message"] == "capture started"]
    assert started["component"] == "capture" and started["pipeline"] == traced_run.pipeline
    assert started["trace_id"] == f"{TRACE_ID:032x}"  # the capture activity's span
    assert f":{REDACTED}@" in started["source"]

    committed = [line for line in lines if line["message"] == "batch committed"]
    assert committed
    for line in committed:
        assert line["level"] == "debug" and line["component"] == "apply"
        assert line["pipeline"] == traced_run.pipeline
        assert line["collection"] == traced_run.collection
        assert len(line["trace_id"]) == 32 and len(line["span_id"]) == 16
        assert line["trace_id"] != f"{TRACE_ID:032x}"  # the micro-batch's own trace
    # One line per batch, not per document.
    assert len(committed) <= 20

    # The pipeline's state changes, from the workflow (Temporal's workflow logger).
    states = [line for line in lines if line["message"].startswith("pipeline state ")]
    assert all(line["pipeline"] == traced_run.pipeline for line in states)
    assert [line["state"] for line in states][-2:] == ["STREAMING", "STOPPED"]
