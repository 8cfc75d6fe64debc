"""Capture throughput, side by side in one run: bare change stream, Lakeward's `change_stream`
and `oplog` strategies, and the real Debezium MongoDB connector.

Starts its own local stack (mongo, kafka, connect) on fixed ports 24xxx in .lakeward/bench-stack,
writes each workload into MongoDB first, then starts every capture from a point before the
workload and times it until N events are published (committed). Stops the servers it started.

    .venv/bin/python -m bench.capture --docs 20000 [--repeat 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/capture.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

import psutil
from bson import Timestamp
from pymongo import MongoClient

from lakeward.capture import CaptureProgress, build_capture
from lakeward.generate import Generator
from lakeward.generate.writer import open_collection
from lakeward.generate.writer import run as write_batches
from lakeward.settings import StackSettings
from lakeward.stack import Stack
from workflows.spec import PipelineSpec

REPO = Path(__file__).resolve().parent.parent

PORTS = dict(
    mongo_port=24017,
    kafka_port=24092,
    kafka_controller_port=24093,
    temporal_port=24233,
    temporal_ui_port=24234,
    connect_port=24083,
    s3_port=24333,
    vault_port=24200,
    prometheus_port=24090,
    api_port=24000,
    worker_metrics_port=24464,
)
SERVERS = ("mongo", "kafka", "connect")
STRATEGIES = ("bare", "change_stream", "oplog", "debezium")


@dataclass
class Result:
    workload: str
    strategy: str
    run: int
    events: int
    seconds: float  # capture start -> N events published/committed
    first_event_s: float | None  # capture start -> first event (Lakeward: first batch) seen
    peak_rss_mb: float | None = None
    #: events already counted at first_event_s (1; Lakeward: the first committed batch's size)
    first_events: int = 1
    error: str | None = None
    #: CPU seconds (user + system) the capture side used: this process for bare and Lakeward's
    #: strategies, the Kafka Connect JVM for Debezium
    cpu_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds and not self.error else 0.0

    @property
    def cpu_us_per_event(self) -> float | None:
        if self.cpu_s is None or not self.events or self.error:
            return None
        return self.cpu_s / self.events * 1e6

    @property
    def steady_rate(self) -> float:
        """Events/s after the first event or batch (excludes start-up: producer init, connector
        creation); 0 when everything arrived at once."""
        if self.error or self.first_event_s is None or self.seconds <= self.first_event_s:
            return 0.0
        return (self.events - self.first_events) / (self.seconds - self.first_event_s)


class RssSampler:
    """Peak RSS of this process while a capture runs (sampled every 50 ms on a thread)."""

    def __init__(self) -> None:
        self._proc = psutil.Process()
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


# ---- workloads ------------------------------------------------------------------------------


@dataclass
class Workload:
    name: str
    database: str
    collection: str
    start_at: float  # epoch seconds, before the measured changes (inclusive second)
    events: int
    full_document: bool  # the bare loop asks for updateLookup


def _wait_next_second() -> float:
    """Sleep past the current second so `int(start_at)` excludes everything written before."""
    time.sleep(1.2)
    return time.time()


def write_workload(uri: str, kind: str, n: int, tag: str) -> Workload:
    db = f"bench_{kind}_{tag}"
    client, coll = open_collection(uri, db, "orders", drop=True)
    try:
        if kind == "insert":
            gen = Generator(seed=1, mix="insert:100")
            start_at = _wait_next_second()
            t0 = time.monotonic()
            result = write_batches(coll, gen.batches(n, batch_size=500))
        else:
            gen = Generator(seed=1, mix="update:100", pool_size=max(100_000, n))
            write_batches(coll, gen.batches(0, initial=n, batch_size=500))
            start_at = _wait_next_second()
            t0 = time.monotonic()
            result = write_batches(coll, gen.batches(n, batch_size=500))
        took = time.monotonic() - t0
        if result.errors:
            raise RuntimeError(f"workload {kind}: {result.errors} writes rejected")
        print(
            f"  wrote {kind} workload: {n} changes in {took:.1f}s ({n / took:,.0f}/s) into {db}",
            flush=True,
        )
    finally:
        client.close()
    return Workload(kind, db, "orders", start_at, n, full_document=kind == "update")


# ---- the measurements -----------------------------------------------------------------------


def measure_bare(uri: str, w: Workload, run: int) -> Result:
    """A bare pymongo change stream loop that only counts events."""
    client: MongoClient[Any] = MongoClient(uri)
    try:
        t0 = time.monotonic()
        first = None
        count = 0
        ops: dict[str, int] = {}
        kwargs: dict[str, Any] = {"start_at_operation_time": Timestamp(int(w.start_at), 0)}
        if w.full_document:
            kwargs["full_document"] = "updateLookup"
        with RssSampler() as rss, client[w.database][w.collection].watch(**kwargs) as stream:
            for change in stream:
                op = change["operationType"]
                ops[op] = ops.get(op, 0) + 1
                if first is None:
                    first = time.monotonic() - t0
                count += 1
                if count >= w.events:
                    break
            seconds = time.monotonic() - t0
        return Result(w.name, "bare", run, count, seconds, first, rss.peak_mb, extra={"ops": ops})
    finally:
        client.close()


def _spec(w: Workload, strategy: str, tag: str) -> PipelineSpec:
    return PipelineSpec.model_validate(
        {
            "name": f"bench-{w.name}-{strategy.replace('_', '-')}-{tag}",
            "source": {
                "uri": "mongodb://unused/?replicaSet=rs0",
                "database": w.database,
                "collections": [w.collection],
                "capture": strategy,
            },
        }
    )


async def measure_lakeward(
    settings: StackSettings, w: Workload, strategy: str, run: int, tag: str
) -> Result:
    spec = _spec(w, strategy, f"{tag}-{run}")
    prefix = f"bench{tag}{run}{strategy.replace('_', '')}{w.name}"
    capture = build_capture(
        spec, settings.mongo_uri, settings.kafka_bootstrap, prefix, start_at=w.start_at
    )
    state: dict[str, Any] = {"events": 0, "first": None, "first_events": 1, "done": None}
    t0 = time.monotonic()

    def on_batch(progress: CaptureProgress) -> None:
        if progress.events and state["first"] is None:
            state["first"] = time.monotonic() - t0
            state["first_events"] = progress.events
        state["events"] = progress.events
        if progress.events >= w.events and state["done"] is None:
            state["done"] = time.monotonic() - t0

    with RssSampler() as rss:
        progress = await capture.run(on_batch, lambda: state["events"] >= w.events)
    seconds = state["done"] or (time.monotonic() - t0)
    return Result(
        w.name,
        strategy,
        run,
        progress.events,
        seconds,
        state["first"],
        rss.peak_mb,
        first_events=state["first_events"],
        extra={"batches": progress.batches, "skipped": progress.skipped},
    )


def _count_topic(
    bootstrap: str, topic: str, n: int, t0: float, out: dict[str, Any], stop: threading.Event
) -> None:
    """Count data records (non-null values) in `topic` with a read_committed consumer until n."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        while not stop.is_set():  # the capture creates the topic
            meta = consumer.list_topics(topic, timeout=5).topics.get(topic)
            if meta is not None and meta.error is None and meta.partitions:
                break
            time.sleep(0.1)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        count = 0
        while count < n and not stop.is_set():
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                if msg.error() or msg.value() is None:
                    continue
                if count == 0:
                    out["first"] = time.monotonic() - t0
                count += 1
            out["events"] = count
        out["done"] = time.monotonic() - t0 if count >= n else None
    except Exception as exc:  # reported in the result
        out["error"] = repr(exc)
    finally:
        consumer.close()


async def measure_debezium(
    settings: StackSettings, w: Workload, run: int, tag: str, timeout_s: float
) -> Result:
    from lakeward.debezium import DebeziumCapture

    spec = _spec(w, "debezium", f"{tag}-{run}")
    prefix = f"bench{tag}{run}dbz{w.name}"
    url = f"http://{settings.host}:{settings.connect_port}"
    capture = build_capture(
        spec,
        settings.mongo_uri,
        settings.kafka_bootstrap,
        prefix,
        start_at=w.start_at,
        connect_url=url,
    )
    assert isinstance(capture, DebeziumCapture)
    capture._poll_s = 0.5  # supervision poll only; does not touch the connector
    topic = spec.topic(prefix, w.collection)
    out: dict[str, Any] = {"events": 0, "first": None, "done": None}
    stop = threading.Event()
    t0 = time.monotonic()
    counter = threading.Thread(
        target=_count_topic, args=(settings.kafka_bootstrap, topic, w.events, t0, out, stop)
    )
    counter.start()
    task = asyncio.create_task(capture.run(lambda p: None, lambda: out["done"] is not None))
    error = None
    try:
        deadline = time.monotonic() + timeout_s
        while counter.is_alive() and time.monotonic() < deadline:
            if task.done():
                task.result()  # raises a capture failure
                break
            await asyncio.sleep(0.1)
        if counter.is_alive():
            error = f"timeout after {timeout_s:.0f}s with {out['events']} events"
    except Exception as exc:
        error = repr(exc)
    finally:
        stop.set()
        counter.join()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        try:
            await capture.delete_connector()
        except Exception as exc:
            print(f"  (could not delete connector: {exc!r})", flush=True)
    error = error or out.get("error")
    seconds = out["done"] or (time.monotonic() - t0)
    return Result(w.name, "debezium", run, out["events"], seconds, out["first"], None, error=error)


def _cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds a process has used so far (its threads included)."""
    if pid is None:
        return None
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


# ---- the run --------------------------------------------------------------------------------


def versions(settings: StackSettings) -> dict[str, str]:
    from importlib.metadata import version

    v = {"python": platform.python_version()}
    for pkg in ("pymongo", "confluent-kafka", "lakeward"):
        with contextlib.suppress(Exception):
            v[pkg] = version(pkg)
    try:
        with MongoClient(settings.mongo_uri) as c:
            v["mongod"] = c.server_info()["version"]
    except Exception:
        pass
    try:
        import httpx

        info = httpx.get(f"http://{settings.host}:{settings.connect_port}/").json()
        v["kafka-connect"] = info.get("version", "?")
        plugins = httpx.get(
            f"http://{settings.host}:{settings.connect_port}/connector-plugins"
        ).json()
        for p in plugins:
            if "MongoDb" in p.get("class", ""):
                v["debezium-connector-mongodb"] = p.get("version", "?")
    except Exception:
        pass
    return v


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "mem_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
    }


def print_table(results: list[Result]) -> None:
    print(
        f"\n{'workload':8} {'strategy':14} {'run':>3} {'events':>7} {'sec':>7} {'ev/s':>9} "
        f"{'steady':>9} {'cpu us/ev':>9} {'rss MB':>7}  note"
    )
    for r in results:
        rss = f"{r.peak_rss_mb:7.0f}" if r.peak_rss_mb else "      -"
        cpu = f"{r.cpu_us_per_event:9.0f}" if r.cpu_us_per_event is not None else "        -"
        print(
            f"{r.workload:8} {r.strategy:14} {r.run:3d} {r.events:7d} {r.seconds:7.2f} "
            f"{r.rate:9,.0f} {r.steady_rate:9,.0f} {cpu} {rss}  {r.error or ''}"
        )
    print(f"\n{'workload':8} {'strategy':14} {'mean ev/s':>10} {'/bare':>6} {'/dbz':>6}")
    for workload in dict.fromkeys(r.workload for r in results):
        means = {}
        for strategy in dict.fromkeys(r.strategy for r in results):
            rates = [
                r.rate
                for r in results
                if r.workload == workload and r.strategy == strategy and not r.error
            ]
            if rates:
                means[strategy] = sum(rates) / len(rates)
        for strategy, mean in means.items():
            bare = f"{mean / means['bare']:6.2f}" if "bare" in means else "     -"
            dbz = f"{mean / means['debezium']:6.2f}" if "debezium" in means else "     -"
            print(f"{workload:8} {strategy:14} {mean:10,.0f} {bare} {dbz}")


async def main_async(args: argparse.Namespace) -> int:
    settings = StackSettings(
        stack_dir=REPO / ".lakeward" / "bench-stack", lib_dir=REPO / ".lakeward" / "lib", **PORTS
    )
    stack = Stack(settings)
    servers = [s for s in stack.servers if s.name in SERVERS]
    results: list[Result] = []
    tag = uuid.uuid4().hex[:6]
    started = time.monotonic()
    try:
        print("starting mongo, kafka, connect ...", flush=True)
        timings = await asyncio.to_thread(stack.up, servers)
        print("  " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()), flush=True)
        info = {"machine": machine(), "versions": versions(settings), "n": args.docs}
        connect_pid = next(
            (row.pid for row in stack.status(servers) if row.server == "connect"), None
        )
        print(json.dumps(info), flush=True)
        strategies = [s for s in STRATEGIES if s in args.strategies.split(",")]
        for kind in args.workloads.split(","):
            print(f"workload {kind}, N={args.docs}", flush=True)
            w = await asyncio.to_thread(write_workload, settings.mongo_uri, kind, args.docs, tag)
            for run in range(1, args.repeat + 1):
                for strategy in strategies:
                    print(f"  {strategy} run {run} ...", flush=True)
                    cpu_pid = connect_pid if strategy == "debezium" else os.getpid()
                    cpu_before = _cpu_seconds(cpu_pid)
                    try:
                        if strategy == "bare":
                            r = await asyncio.to_thread(measure_bare, settings.mongo_uri, w, run)
                        elif strategy == "debezium":
                            r = await measure_debezium(settings, w, run, tag, args.timeout)
                        else:
                            r = await asyncio.wait_for(
                                measure_lakeward(settings, w, strategy, run, tag), args.timeout
                            )
                    except Exception as exc:
                        r = Result(kind, strategy, run, 0, 0.0, None, error=repr(exc)[:300])
                    cpu_after = _cpu_seconds(cpu_pid)
                    if cpu_before is not None and cpu_after is not None:
                        r.cpu_s = cpu_after - cpu_before
                    results.append(r)
                    print(
                        f"    {r.events} events in {r.seconds:.2f}s = {r.rate:,.0f}/s "
                        f"(steady {r.steady_rate:,.0f}/s) {r.error or ''}",
                        flush=True,
                    )
        print_table(results)
        print(f"\ntotal {time.monotonic() - started:.0f}s")
        if args.json:
            Path(args.json).write_text(
                json.dumps(
                    {
                        **info,
                        "results": [
                            {
                                **asdict(r),
                                "rate": r.rate,
                                "steady_rate": r.steady_rate,
                                "cpu_us_per_event": r.cpu_us_per_event,
                            }
                            for r in results
                        ],
                    },
                    indent=2,
                )
            )
    finally:
        if not args.keep_stack:
            print("stopping:", ", ".join(stack.down(servers)), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--docs", type=int, default=20_000, help="N changes per workload")
    p.add_argument("--repeat", type=int, default=1, help="measurements per strategy and workload")
    p.add_argument("--workloads", default="insert,update")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--timeout", type=float, default=180.0, help="per measurement, seconds")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--keep-stack", action="store_true", help="leave the servers running")
    return asyncio.run(main_async(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
