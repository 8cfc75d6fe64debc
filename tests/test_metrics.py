"""docs/metrics.md is the truth about Lakeward's metrics: a running worker and the API expose
exactly the metrics it lists, with its types and labels, and the values say what a user needs.

The catalogue is read from the doc, never repeated here. The end-to-end test runs a real
`lakeward worker` process and the API against the real stack: a snapshot of 300 documents, then
inserts, updates, deletes and one change the strict schema policy dead-letters, then a
reconciliation; it scrapes both /metrics endpoints.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from pymongo import MongoClient

from api.app import create_app
from lakeward import metrics
from lakeward.settings import Settings
from tests.test_slice import _lake_rows
from tests.test_workers import (
    free_port,
    start_worker_process,
    stop_worker_process,
    worker_settings,
)
from workers.main import connect

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
ADMIN_TOKEN = "lwt_metrics-test-admin"
#: Families libraries add, documented as families rather than one by one.
LIBRARY_PREFIXES = ("process_", "python_", "temporal_")


@dataclass(frozen=True)
class Documented:
    name: str  # as documented: counters end in _total
    type: str
    labels: frozenset[str]


def catalogue() -> dict[str, Documented]:
    """The metric table of docs/metrics.md, by family name (a counter's without `_total`)."""
    rows = [line for line in DOC.read_text().splitlines() if line.startswith("| `lakeward_")]
    documented: dict[str, Documented] = {}
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        name, kind, labels = cells[0].strip("`"), cells[1], cells[2]
        entry = Documented(name, kind, frozenset(filter(None, re.split(r"[,\s]+", labels))))
        family = name.removesuffix("_total") if kind == "counter" else name
        assert family not in documented, f"{name} is documented twice"
        documented[family] = entry
    assert len(documented) > 30, f"docs/metrics.md's table did not parse: {len(documented)} rows"
    return documented


def families(text: str) -> dict[str, Metric]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def mismatches(scraped: dict[str, Metric], documented: dict[str, Documented]) -> list[str]:
    """Everything on which a scrape and the catalogue disagree."""
    problems = [f"{d.name} is documented but not exposed" for f, d in documented.items()
                if f not in scraped]  # fmt: skip
    for name, family in scraped.items():
        if not name.startswith("lakeward_"):
            continue
        entry = documented.get(name)
        if entry is None:
            problems.append(f"{name} ({family.type}) is exposed but not in docs/metrics.md")
            continue
        if family.type != entry.type:
            problems.append(f"{entry.name} is a {family.type}, documented as a {entry.type}")
        for sample in family.samples:
            labels = set(sample.labels) - {"le"}
            if labels != entry.labels:
                problems.append(f"{sample.name} has labels {sorted(labels)}, "
                                f"documented {sorted(entry.labels)}")  # fmt: skip
    return problems


def value(scraped: dict[str, Metric], sample: str, **labels: str) -> float:
    """The sum of the samples named `sample` whose labels include `labels` (0 if none)."""
    return sum(
        s.value
        for family in scraped.values()
        for s in family.samples
        if s.name == sample and labels.items() <= s.labels.items()
    )


def label_values(scraped: dict[str, Metric]) -> Iterable[str]:
    for name, family in scraped.items():
        if name.startswith("lakeward_"):
            for sample in family.samples:
                yield from sample.labels.values()


# --- pure -----------------------------------------------------------------------------------------


def test_the_catalogue_matches_the_metrics_this_process_defines() -> None:
    problems = mismatches(families(generate_latest(REGISTRY).decode()), catalogue())
    assert problems == []


async def test_api_requests_are_counted_by_route_template_never_by_path(tmp_path) -> None:
    app = create_app(_api_settings(tmp_path))  # no Temporal needed for these answers
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://lakeward") as http:
        before = families((await http.get("/metrics")).text)
        assert (await http.get("/v1/pipelines/secret-order-4711")).status_code == 401
        assert (await http.get("/no/such/page-4711")).status_code == 404
        assert (await http.get("/healthz")).status_code == 200
        after = families((await http.get("/metrics")).text)

    def grew(**labels: str) -> float:
        name = "lakeward_api_requests_total"
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew(method="GET", route="/v1/pipelines/{name}", status="401") == 1
    assert grew(method="GET", route="unmatched", status="404") == 1
    assert grew(method="GET", route="/healthz", status="200") == 1
    assert grew(method="GET", route="/metrics", status="200") == 1
    assert not [v for v in label_values(after) if "4711" in v]
    assert value(after, "lakeward_api_requests_in_flight") == 1  # the scrape itself
    duration = value(after, "lakeward_api_request_duration_seconds_count", route="/healthz")
    assert duration >= 1
    assert value(after, "lakeward_build_info", component="api") == 1


def test_capture_lag_is_zero_when_caught_up_grows_when_stuck_and_goes_with_the_capture(
    unique,
) -> None:
    pipeline = f"lag-{unique}"

    def lag() -> float | None:
        return REGISTRY.get_sample_value("lakeward_capture_lag_seconds", {"pipeline": pipeline})

    now = time.time()
    metrics.capture_caught_up(pipeline, now)
    assert lag() == pytest.approx(0, abs=60)
    # Committing older changes never moves the known position back.
    metrics.record_capture_batch(pipeline, [_Change("orders", "c", int((now - 7200) * 1000))], 0.1)
    assert lag() == pytest.approx(0, abs=60)
    # A new capture whose newest change is an hour old, and no read since: the lag is that hour.
    metrics.capture_stopped(pipeline)
    metrics.record_capture_batch(pipeline, [_Change("orders", "u", int((now - 3600) * 1000))], 0.1)
    assert lag() == pytest.approx(3600, abs=60)
    metrics.capture_stopped(pipeline)
    assert lag() is None


def test_snapshot_progress_is_the_share_of_ranges_finished_in_the_current_run(unique) -> None:
    pipeline = f"snap-{unique}"

    def ratio() -> float | None:
        labels = {"pipeline": pipeline, "collection": "orders"}
        return REGISTRY.get_sample_value("lakeward_snapshot_progress_ratio", labels)

    metrics.record_snapshot_range(pipeline, "orders", "run-1", 0, 4, 10)
    metrics.record_snapshot_range(pipeline, "orders", "run-1", 0, 4, 10)  # a retried range
    metrics.record_snapshot_range(pipeline, "orders", "run-1", 3, 4, 10)
    assert ratio() == 0.5
    metrics.record_snapshot_range(pipeline, "orders", "run-2", 1, 2, 10)  # a new snapshot
    assert ratio() == 0.5
    documents = REGISTRY.get_sample_value(
        "lakeward_snapshot_documents_total", {"pipeline": pipeline, "collection": "orders"}
    )
    assert documents == 40


@dataclass(frozen=True)
class _Change:
    collection: str
    op: str
    source_ts_ms: int


def _api_settings(tmp_path: Path) -> Settings:
    return Settings(
        admin_token=SecretStr(ADMIN_TOKEN),
        api_tokens_file=tmp_path / "api-tokens.json",
        audit_log=tmp_path / "audit.log",
    )


# --- real servers ---------------------------------------------------------------------------------

SNAPSHOT_DOCS = 300
INSERTS, UPDATES, DELETES = 50, 40, 10


@pytest.mark.slow
@pytest.mark.timeout(900)  # a real worker process; slow to start on a loaded machine
async def test_a_running_pipeline_exposes_exactly_the_documented_metrics(
    core_stack, unique, tmp_path
) -> None:
    documented = catalogue()
    metrics_port = free_port()
    settings = worker_settings(
        core_stack, unique, worker_metrics_port=metrics_port, admin_token=SecretStr(ADMIN_TOKEN),
        api_tokens_file=tmp_path / "api-tokens.json", audit_log=tmp_path / "audit.log",
    )  # fmt: skip
    name, db = f"m-{unique}", f"m_{unique}"
    ids = [f"o{i:04d}" for i in range(SNAPSHOT_DOCS + INSERTS + 1)]
    with MongoClient(core_stack.mongo_uri) as mongo:
        mongo[db].orders.insert_many(
            [{"_id": ids[i], "n": i, "name": f"doc {i}"} for i in range(SNAPSHOT_DOCS)]
        )

    worker = start_worker_process(settings, tmp_path / "worker.log")
    client = await connect(settings)
    app = create_app(settings, client=client)
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def scrape_worker() -> dict[str, Metric]:
        try:
            text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        except httpx.HTTPError:
            return {}
        return families(text)

    async with httpx.AsyncClient(transport=transport, base_url="http://l", headers=headers) as http:
        try:
            spec = {
                "name": name,
                "source": {"uri": core_stack.mongo_uri, "database": db, "collections": ["orders"]},
                "sink": {"uri": str(tmp_path / "lake")},
                "schema_policy": "strict",
            }
            created = await http.post("/v1/pipelines", json=spec)
            assert created.status_code == 201, created.text
            table_uri = created.json()["tables"][f"{db}.orders"]

            async def streaming_with_the_snapshot() -> bool:
                status = (await http.get(f"/v1/pipelines/{name}")).json()
                assert status["state"] != "FAILED", status
                rows = await asyncio.to_thread(_lake_rows, table_uri)
                return status["state"] == "STREAMING" and len(rows) == SNAPSHOT_DOCS

            await _until(streaming_with_the_snapshot, timeout=400, what=worker.log_text)

            with MongoClient(core_stack.mongo_uri) as mongo:
                orders = mongo[db].orders
                orders.insert_many([{"_id": ids[SNAPSHOT_DOCS + i], "n": i, "extra": True}
                                    for i in range(INSERTS)])  # fmt: skip
                for i in range(UPDATES):
                    orders.update_one({"_id": ids[i]}, {"$set": {"n": -i - 1}})  # never a no-op
                orders.delete_many({"_id": {"$in": ids[100 : 100 + DELETES]}})
                # A string where the table has int64: strict policy sends it to dead letters.
                orders.insert_one({"_id": ids[-1], "n": "not a number"})

            seen: dict[str, object] = {}

            async def applied_everything() -> bool:
                scraped = await asyncio.to_thread(scrape_worker)
                seen["dead letters"] = value(scraped, "lakeward_dead_letters_total", pipeline=name)
                seen["applied"] = _applied(scraped, name)
                expected = {"r": SNAPSHOT_DOCS, "c": INSERTS, "u": UPDATES, "d": DELETES}
                return seen["dead letters"] == 1 and seen["applied"] == expected

            await _until(applied_everything, 300, lambda: f"{seen}\n{worker.log_text()}")
            lake = await asyncio.to_thread(_lake_rows, table_uri)
            assert len(lake) == SNAPSHOT_DOCS + INSERTS - DELETES and ids[-1] not in lake

            reconcile = await http.post(f"/v1/pipelines/{name}:reconcile")
            assert reconcile.status_code == 202, reconcile.text

            run = f"/v1/pipelines/{name}/reconciliations/{reconcile.json()['id']}"
            report: dict[str, Any] = {}

            async def reconciled() -> bool:
                detail = (await http.get(run)).json()
                assert detail["status"] in ("RUNNING", "COMPLETED"), detail
                report.update(detail.get("result") or {})
                return detail["status"] == "COMPLETED"

            await _until(reconciled, 300, worker.log_text)
            worker_scrape = await asyncio.to_thread(scrape_worker)
            api_scrape = families((await http.get("/metrics")).text)
        finally:
            await http.delete(f"/v1/pipelines/{name}")
            handle = client.get_workflow_handle(f"pipeline:{name}")
            await _ended(handle)
            stop_worker_process(worker)

    assert isinstance(worker_scrape, dict)
    # 1. The catalogue and the scrapes agree, both ways, types and labels included.
    assert mismatches(worker_scrape, documented) == [], worker.log_text()[-2000:]
    assert mismatches(api_scrape, documented) == []
    for prefix in LIBRARY_PREFIXES:
        assert any(n.startswith(prefix) for n in worker_scrape), f"no {prefix}* on the worker"
    assert any(n.startswith("process_") for n in api_scrape)
    assert any(n.startswith("python_") for n in api_scrape)

    # 2. Values a user watches.
    w = worker_scrape
    assert value(w, "lakeward_build_info", component="worker") == 1
    # Every change written was applied once (the dead-lettered one excepted) and captured once.
    assert _applied(w, name) == {"r": SNAPSHOT_DOCS, "c": INSERTS, "u": UPDATES, "d": DELETES}
    captured = {op: value(w, "lakeward_capture_events_total", pipeline=name, op=op)
                for op in "cud"}  # fmt: skip
    assert captured == {"c": INSERTS + 1, "u": UPDATES, "d": DELETES}
    assert value(w, "lakeward_capture_batches_total", pipeline=name) >= 1
    assert value(w, "lakeward_dead_letters_total", pipeline=name, collection="orders",
                 reason="schema_conflict") == 1  # fmt: skip
    assert value(w, "lakeward_dead_letters_total", pipeline=name) == 1
    batches = value(w, "lakeward_apply_batches_total", pipeline=name, collection="orders")
    assert batches >= 2
    fresh = value(w, "lakeward_freshness_seconds_count", pipeline=name, collection="orders")
    # One observation per committed batch of changes (a batch of only Kafka tombstones has none).
    assert 1 <= fresh <= batches
    assert value(w, "lakeward_freshness_seconds_bucket", pipeline=name, le="+Inf") == fresh
    assert value(w, "lakeward_apply_commit_duration_seconds_count", pipeline=name) == batches
    assert value(w, "lakeward_freshness_lag_seconds", pipeline=name) >= 0
    assert value(w, "lakeward_schema_evolutions_total", pipeline=name, kind="column_added") >= 3
    assert value(w, "lakeward_snapshot_documents_total", pipeline=name) == SNAPSHOT_DOCS
    assert value(w, "lakeward_snapshot_progress_ratio", pipeline=name) == 1.0
    partitions = {s.labels["partition"] for s in w["lakeward_kafka_backlog_records"].samples
                  if s.labels["pipeline"] == name}  # fmt: skip
    assert partitions and all(p.isdigit() for p in partitions), partitions
    # The reconciliation's metrics say what its report says.
    summary = report["summary"]
    assert value(w, "lakeward_reconcile_runs_total", pipeline=name) == 1
    assert value(w, "lakeward_reconcile_runs_total", pipeline=name,
                 outcome=summary["outcome"]) == 1  # fmt: skip
    for kind in ("missing", "extra", "changed"):
        differences = value(w, "lakeward_reconcile_differences", pipeline=name, kind=kind)
        assert differences == summary[kind], (kind, report)
    documents = value(w, "lakeward_reconcile_documents_total", pipeline=name)
    assert documents == summary["documents"] >= len(lake)
    assert value(w, "lakeward_reconcile_duration_seconds_count", pipeline=name) == 1
    assert value(w, "lakeward_reconcile_duration_seconds_sum", pipeline=name) == pytest.approx(
        summary["finished_at"] - summary["started_at"]
    )
    assert value(w, "lakeward_pool_size", queue="io") == settings.io_max_concurrent
    assert 0 <= value(w, "lakeward_pool_in_use", queue="io") <= settings.io_max_concurrent
    # Capture still runs: its lag is exposed for the pipeline.
    assert [s for s in w["lakeward_capture_lag_seconds"].samples if s.labels["pipeline"] == name]
    assert value(w, "lakeward_apply_batches_in_flight", pipeline=name) in (0, 1)

    a = api_scrape
    assert value(a, "lakeward_build_info", component="api") == 1
    assert value(a, "lakeward_api_requests_total", method="POST", route="/v1/pipelines",
                 status="201") == 1  # fmt: skip
    assert value(a, "lakeward_api_requests_total", method="GET",
                 route="/v1/pipelines/{name}", status="200") >= 1  # fmt: skip

    # 3. Bounded cardinality: no document id (nor anything containing one) in any label.
    for scraped in (worker_scrape, api_scrape):
        values = set(label_values(scraped))
        assert not {v for v in values for i in ids if i in v}
    api_routes = {s.labels["route"] for s in a["lakeward_api_requests"].samples}
    assert not [r for r in api_routes if unique in r], api_routes


def _applied(scraped: dict[str, Metric], pipeline: str) -> dict[str, float]:
    return {
        op: value(scraped, "lakeward_apply_records_total", pipeline=pipeline, op=op)
        for op in "rcud"
    }


async def _until(check, timeout: float, what) -> None:  # type: ignore[no-untyped-def]
    """Poll an async check; on timeout fail with `what()` (the worker's log)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not reached in {timeout}s; worker log:\n{what()[-3000:]}")
        await asyncio.sleep(0.5)


async def _ended(handle) -> None:  # type: ignore[no-untyped-def]
    """Terminate the pipeline if the stop did not end it: its capture would hold the worker."""
    from tests.test_workers import end_pipeline

    await end_pipeline(handle)
