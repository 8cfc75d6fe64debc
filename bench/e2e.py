"""End to end on the embedded default: MongoDB -> capture -> Kafka -> apply -> Delta, driven by a
real `lakeward worker` process and the Temporal dev server, with the project's data generator.

Measures, in one run on one machine:

* freshness (source commit to visible in the Delta table, p50/p95/p99) at steady write rates
  (1k, 5k, 10k changes/s by default), each phase with its own collection and pipeline;
* sustained changes/s at saturation (the generator writes as fast as it can);
* the orchestration price on its own (a workflow of no-op activities on the same server) and
  inside the pipelines (gaps between apply activities in their histories);
* CPU and memory of every process (mongod, kafka, temporal, the worker, this process, which
  runs the generator), the load average and what other users of the machine took;
* the stage ceilings beside them: a bare change-stream read, a bare Kafka consume, a bare Delta
  append, on the saturation phase's own data.

How freshness is measured without trusting the engine's own counters: after each phase the whole
topic is read back (every change's `source.ts_ms`, MongoDB's wallTime of the commit, and the
envelope's capture time), and every Delta commit of the table is read from `_delta_log/`: its
`txn` actions give the last Kafka offset it covers per partition, and the commit file's mtime is
the moment it became visible. A change's freshness is (mtime of the first commit covering its
offset) - (its source commit time).

    .venv/bin/python -m bench.e2e                      # the default run, about 12 minutes
    .venv/bin/python -m bench.e2e --seconds 30 --saturation-seconds 30 --rates 1000   # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/e2e.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
import psutil
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from activities.contracts import APPLY_BATCH
from bench.apply import _percentile
from bench.capture import PORTS, REPO, Workload, _count_topic, machine, measure_bare
from bench.e2e_noop import NoopInput, NoopWorkflow, noop
from lakeward.generate import Generator, open_collection
from lakeward.generate import run as write_batches
from lakeward.generate.options import pacing_batch_size
from lakeward.settings import Settings, StackSettings
from lakeward.stack import Stack
from workers.main import connect
from workflows.contracts import PIPELINE_WORKFLOW, PipelineStatus, StartPipelineInput
from workflows.spec import PipelineSpec

WORK = REPO / ".lakeward" / "bench-e2e"
SERVERS = ("mongo", "kafka", "temporal")
#: `lakeward generate`'s default mix.
MIX = "insert:70,update:25,delete:5"
PROCESSES = ("mongo", "kafka", "temporal", "worker", "bench")


# ---- resources ------------------------------------------------------------------------------


class ResourceSampler:
    """Every `interval` seconds: CPU (cores) and RSS of each named process (children included),
    the 1-minute load average, and the machine's busy cores, so what the rest of the machine
    took (other users) is the busy cores minus ours."""

    def __init__(self, pids: dict[str, int], interval: float = 1.0) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="sampler")

    def _read(self) -> tuple[float, dict[str, tuple[float, float]], float]:
        now = time.time()
        per: dict[str, tuple[float, float]] = {}
        for name, proc in self.procs.items():
            cpu = rss = 0.0
            with contextlib.suppress(psutil.Error):
                # The servers and the worker are this process's children when it started them.
                family = [] if name == "bench" else proc.children(recursive=True)
                for p in (proc, *family):
                    with contextlib.suppress(psutil.Error):
                        t = p.cpu_times()
                        cpu += t.user + t.system
                        rss += p.memory_info().rss
            per[name] = (cpu, rss / 2**20)
        total = psutil.cpu_times()
        busy = sum(total) - total.idle - getattr(total, "iowait", 0.0)
        return now, per, busy

    def _loop(self) -> None:
        last = self._read()
        while not self._stop.wait(self.interval):
            cur = self._read()
            dt = cur[0] - last[0]
            ours = {n: (cur[1][n][0] - last[1][n][0]) / dt for n in cur[1]}
            busy = (cur[2] - last[2]) / dt
            self.samples.append(
                {
                    "t": cur[0],
                    "load1": os.getloadavg()[0],
                    "busy_cores": busy,
                    "others_cores": max(0.0, busy - sum(ours.values())),
                    "cpu_cores": ours,
                    "rss_mb": {n: v[1] for n, v in cur[1].items()},
                }
            )
            last = cur

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self, t0: float, t1: float) -> dict[str, Any]:
        window = [s for s in self.samples if t0 < s["t"] <= t1]
        if not window:
            return {}

        def mean(values: list[float]) -> float:
            return sum(values) / len(values)

        return {
            "samples": len(window),
            "load1": {
                "min": min(s["load1"] for s in window),
                "mean": mean([s["load1"] for s in window]),
                "max": max(s["load1"] for s in window),
            },
            "busy_cores": mean([s["busy_cores"] for s in window]),
            "others_cores": mean([s["others_cores"] for s in window]),
            "processes": {
                name: {
                    "cpu_cores": mean([s["cpu_cores"][name] for s in window]),
                    "rss_mb_mean": mean([s["rss_mb"][name] for s in window]),
                    "rss_mb_peak": max(s["rss_mb"][name] for s in window),
                }
                for name in self.procs
            },
        }


# ---- the worker and the pipelines -----------------------------------------------------------


@dataclass
class Run:
    """One benchmark run: its stack, its worker's queues and prefix, its folder."""

    settings: StackSettings
    tag: str
    stack: Stack
    client: Client
    database: str
    lake: Path

    @property
    def task_queue(self) -> str:
        return f"bench-e2e-{self.tag}"

    @property
    def io_task_queue(self) -> str:
        return f"bench-e2e-io-{self.tag}"

    @property
    def topic_prefix(self) -> str:
        return f"benche2e{self.tag}"

    def worker_env(self) -> dict[str, str]:
        s = self.settings
        return {
            "LAKEWARD_TEMPORAL_ADDRESS": s.temporal_address,
            "LAKEWARD_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
            "LAKEWARD_TASK_QUEUE": self.task_queue,
            "LAKEWARD_IO_TASK_QUEUE": self.io_task_queue,
            "LAKEWARD_TOPIC_PREFIX": self.topic_prefix,
            "LAKEWARD_WORKER_METRICS_PORT": str(s.worker_metrics_port),
        }

    def spec(self, phase: str) -> PipelineSpec:
        return PipelineSpec.model_validate(
            {
                "name": f"e2e-{phase}-{self.tag}",
                "source": {
                    "uri": self.settings.mongo_uri,
                    "database": self.database,
                    "collections": [phase],
                },
                "sink": {"uri": str(self.lake)},
            }
        )


def start_worker(run: Run) -> int:
    """A real `lakeward worker` process (PID file in the bench stack's run/ folder)."""
    process = run.stack.service("worker")
    if process.is_running():  # left by an interrupted run of this benchmark: its queues are gone
        process.stop()
    lakeward = str(Path(sys.executable).parent / "lakeward")
    return process.start([lakeward, "worker"], cwd=REPO, env=run.worker_env())


async def query_status(handle: WorkflowHandle[Any, Any]) -> PipelineStatus | None:
    """The pipeline's status; None when the query fails (a worker restarting, a workflow task
    failing): the callers poll again, and the figures come from the topic and the table."""
    try:
        return await handle.query("status", result_type=PipelineStatus)
    except Exception as exc:
        print(f"    (status query failed: {exc!r:.200})", flush=True)
        return None


async def wait_for(
    probe: Callable[[], Any], check: Callable[[Any], bool], timeout_s: float, every: float = 0.5
) -> Any:
    deadline = time.monotonic() + timeout_s
    value = await probe()
    while not check(value) and time.monotonic() < deadline:
        await asyncio.sleep(every)
        value = await probe()
    return value


# ---- load -----------------------------------------------------------------------------------


class _Enough(Exception):
    pass


def write_load(
    uri: str, database: str, collection: str, rate: float | None, seconds: float, seed: int
) -> dict[str, Any]:
    """`lakeward generate`'s writer for `seconds`, paced to `rate` (None: as fast as it can)."""
    generator = Generator(seed=seed, mix=MIX)
    total = int(rate * seconds) if rate else 100_000_000
    client, coll = open_collection(uri, database, collection)
    deadline = time.monotonic() + seconds
    seen: dict[str, Any] = {}

    def on_batch(batch: Any, result: Any) -> None:
        seen["result"] = result
        if time.monotonic() >= deadline:
            raise _Enough

    started = time.time()
    try:
        with client:
            batches = generator.batches(total, batch_size=pacing_batch_size(rate, 500))
            seen["result"] = write_batches(coll, batches, rate=rate, on_batch=on_batch)
    except _Enough:
        pass
    ended = time.time()
    result = seen["result"]
    operations = sum(result.counts.values())
    return {
        "target_rate": rate,
        "started": started,
        "ended": ended,
        "operations": operations,
        "counts": dict(result.counts),
        "errors": result.errors,
        "rate": operations / (ended - started),
    }


# ---- reading back what happened -------------------------------------------------------------


def read_topic(bootstrap: str, topic: str, timeout_s: float = 300.0) -> dict[int, list[Any]]:
    """Every committed change in `topic`: partition -> [(offset, source ts ms, captured ms)]."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-e2e-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return {}
        partitions = sorted(meta.partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        out: dict[int, list[Any]] = {p: [] for p in partitions}
        done: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while len(done) < len(partitions) and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=2000, timeout=1.0):
                err = msg.error()
                partition = msg.partition() or 0
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        done.add(partition)
                        continue
                    raise RuntimeError(f"reading {topic}: {err}")
                value = msg.value()
                if not value:
                    continue
                envelope = orjson.loads(value)
                out[partition].append(
                    (msg.offset(), envelope["source"]["ts_ms"], envelope["ts_ms"])
                )
        return out
    finally:
        consumer.close()


@dataclass
class Commit:
    version: int
    visible: float  # epoch seconds: mtime of the commit file
    committed_ms: int  # commitInfo.timestamp
    operation: str
    txn: dict[str, int]  # app id -> last offset


def read_commits(table_uri: str) -> list[Commit]:
    log = Path(table_uri) / "_delta_log"
    commits = []
    for path in sorted(log.glob("*.json")):
        if not path.stem.isdigit():
            continue
        commit = Commit(int(path.stem), path.stat().st_mtime_ns / 1e9, 0, "", {})
        for line in path.read_bytes().splitlines():
            if not line.strip():
                continue
            action = orjson.loads(line)
            if "txn" in action:
                commit.txn[action["txn"]["appId"]] = int(action["txn"]["version"])
            elif "commitInfo" in action:
                commit.committed_ms = int(action["commitInfo"].get("timestamp") or 0)
                commit.operation = str(action["commitInfo"].get("operation", ""))
        commits.append(commit)
    return commits


@dataclass
class Change:
    source_s: float
    captured_s: float
    visible_s: float | None  # None: not visible when the phase ended


def match_changes(
    records: dict[int, list[Any]], commits: list[Commit], app_id: Callable[[int], str]
) -> tuple[list[Change], list[dict[str, Any]]]:
    """Each change with the moment the first Delta commit covering its offset became visible;
    and per commit: when it became visible and how many changes it made visible."""
    changes: list[Change] = []
    per_commit: dict[int, int] = {}
    for partition, rows in records.items():
        applied = [(c.txn[app_id(partition)], c) for c in commits if app_id(partition) in c.txn]
        # Versions only grow for commits that count (a stale one is refused by apply).
        versions = [v for v, _ in applied]
        for offset, source_ms, captured_ms in rows:
            i = bisect.bisect_left(versions, offset)
            visible = applied[i][1] if i < len(applied) else None
            if visible is not None:
                per_commit[visible.version] = per_commit.get(visible.version, 0) + 1
            changes.append(
                Change(
                    source_ms / 1000,
                    captured_ms / 1000,
                    visible.visible if visible is not None else None,
                )
            )
    by_version = {c.version: c for c in commits}
    batches = [
        {"version": v, "visible": by_version[v].visible, "changes": n}
        for v, n in sorted(per_commit.items())
    ]
    return changes, batches


async def apply_timings(client: Client, workflow_id: str) -> dict[str, Any]:
    """From the pipeline's history (every run of it): per apply activity the time from schedule
    to start, the execution, and the gap from its completion to the next apply's start (the
    workflow task that schedules it and the dispatch)."""
    from temporalio.api.enums.v1 import EventType

    run_ids: list[tuple[float, str | None]] = []
    async for wf in client.list_workflows(f"WorkflowId = '{workflow_id}'"):
        run_ids.append((wf.start_time.timestamp(), wf.run_id))
    if not run_ids:  # visibility lags: the latest run only
        run_ids = [(0.0, None)]
    scheduled: dict[tuple[str | None, int], float] = {}
    started: dict[tuple[str | None, int], float] = {}
    done: list[tuple[float, float, float]] = []
    for _, run_id in sorted(run_ids, key=lambda r: r[0]):
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        async for event in handle.fetch_history_events():
            at = event.event_time.ToMicroseconds() / 1e6
            kind = event.event_type
            if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                attrs = event.activity_task_scheduled_event_attributes
                if attrs.activity_type.name == APPLY_BATCH:
                    scheduled[(run_id, event.event_id)] = at
            elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                key = (run_id, event.activity_task_started_event_attributes.scheduled_event_id)
                if key in scheduled:
                    started[key] = at
            elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                key = (run_id, event.activity_task_completed_event_attributes.scheduled_event_id)
                if key in scheduled and key in started:
                    done.append((scheduled[key], started[key], at))
    done.sort()
    to_start = [s - q for q, s, _ in done]
    execution = [c - s for _, s, c in done]
    gaps = [nxt[1] - cur[2] for cur, nxt in itertools.pairwise(done) if nxt[1] >= cur[2]]
    span = (done[-1][2] - done[0][0]) if done else 0.0
    return {
        "batches": len(done),
        "schedule_to_start_ms": _stats(to_start, 1000),
        "execution_ms": _stats(execution, 1000),
        "gap_to_next_start_ms": _stats(gaps, 1000),
        "orchestration_share": (sum(gaps) + (to_start[0] if to_start else 0)) / span
        if span
        else 0.0,
    }


def _stats(values: list[float], scale: float = 1.0) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": _percentile(values, 0.50) * scale,
        "p95": _percentile(values, 0.95) * scale,
        "p99": _percentile(values, 0.99) * scale,
        "max": max(values) * scale,
        "mean": sum(values) / len(values) * scale,
    }


# ---- one phase ------------------------------------------------------------------------------


@dataclass
class PhaseResult:
    name: str
    target_rate: float | None
    write: dict[str, Any] = field(default_factory=dict)
    window: tuple[float, float] = (0.0, 0.0)  # steady window (epoch s)
    ended: float = 0.0  # when the drain ended
    caught_up: bool = False
    changes_in_topic: int = 0
    freshness_s: dict[str, Any] = field(default_factory=dict)
    capture_s: dict[str, Any] = field(default_factory=dict)
    apply_s: dict[str, Any] = field(default_factory=dict)
    not_visible: int = 0
    #: Changes visible in the table when the phase ended (all of them, warm-up included).
    applied_total: int = 0
    applied_rate: float = 0.0  # changes made visible per second in the steady window
    drain_rate: float | None = None
    batch_changes: dict[str, Any] = field(default_factory=dict)
    apply_history: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)
    #: CPU milliseconds per change written, per process, from writing start to the phase's
    #: end: what a change costs, whatever else the machine ran (unlike the rates)
    cpu_ms_per_change: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def analyse(
    result: PhaseResult, changes: list[Change], batches: list[dict[str, Any]], warmup: float
) -> None:
    w0, w1 = result.write["started"], result.write["ended"]
    start = w0 + warmup
    result.window = (start, w1)
    steady = [c for c in changes if start <= c.source_s <= w1]
    # A change not yet visible when the phase ended counts with the lag it had by then: a lower
    # bound, so the percentiles it reaches are lower bounds too (the note says how many).
    lags = [(c.visible_s if c.visible_s is not None else result.ended) - c.source_s for c in steady]
    result.not_visible = sum(1 for c in steady if c.visible_s is None)
    result.applied_total = sum(1 for c in changes if c.visible_s is not None)
    result.freshness_s = _stats(lags)
    result.capture_s = _stats([c.captured_s - c.source_s for c in steady])
    result.apply_s = _stats([c.visible_s - c.captured_s for c in steady if c.visible_s is not None])
    made_visible = sum(b["changes"] for b in batches if start <= b["visible"] <= w1)
    result.applied_rate = made_visible / (w1 - start) if w1 > start else 0.0
    after = [b for b in batches if b["visible"] > w1]
    if len(after) > 1:  # a backlog drained after the writer stopped
        span = after[-1]["visible"] - w1
        result.drain_rate = sum(b["changes"] for b in after) / span if span > 0 else None
    result.batch_changes = _stats([float(b["changes"]) for b in batches if b["changes"]])
    # Series for the plot: per second of source time, the p50 and max lag; per second of
    # wall time, the changes written and made visible.
    per_second: dict[int, list[float]] = {}
    hidden: dict[int, int] = {}
    for c in changes:
        lag = (c.visible_s if c.visible_s is not None else result.ended) - c.source_s
        second = int(c.source_s - w0)
        per_second.setdefault(second, []).append(lag)
        if c.visible_s is None:
            hidden[second] = hidden.get(second, 0) + 1
    visible_per_second: dict[int, int] = {}
    for b in batches:
        k = int(b["visible"] - w0)
        visible_per_second[k] = visible_per_second.get(k, 0) + b["changes"]
    result.series = {
        "lag": [
            [k, _percentile(v, 0.5), max(v), len(v), hidden.get(k, 0)]
            for k, v in sorted(per_second.items())
        ],
        "visible": sorted(visible_per_second.items()),
    }


async def run_phase(
    run: Run,
    name: str,
    rate: float | None,
    args: argparse.Namespace,
    sampler: ResourceSampler,
    seed: int,
) -> PhaseResult:
    result = PhaseResult(name, rate)
    spec = run.spec(name)
    table = f"{spec.source.database}.{name}"
    topic = spec.topic(run.topic_prefix, name)
    handle = await run.client.start_workflow(
        PIPELINE_WORKFLOW,
        StartPipelineInput(
            spec=spec, topic_prefix=run.topic_prefix, io_task_queue=run.io_task_queue
        ),
        id=spec.workflow_id,
        task_queue=run.task_queue,
    )
    status = await wait_for(
        lambda: query_status(handle), lambda s: s is not None and s.state.value == "STREAMING", 120
    )
    if status is None or status.state.value != "STREAMING":
        result.error = (
            "no status" if status is None else f"pipeline is {status.state.value}, not STREAMING"
        )
        return result
    label = f"{rate:,.0f}/s" if rate else "as fast as possible"
    print(f"  {name}: writing {label} for {args_seconds(args, rate):.0f}s ...", flush=True)
    profile = None
    if rate is None and args.profile:
        profile = start_profile(run, args)
    result.write = await asyncio.to_thread(
        write_load,
        run.settings.mongo_uri,
        run.database,
        name,
        rate,
        args_seconds(args, rate),
        seed,
    )
    print(
        f"    wrote {result.write['operations']:,} changes ({result.write['rate']:,.0f}/s); "
        "waiting for the lake ...",
        flush=True,
    )
    # Capture skips an update whose document was deleted before the look-up, so `applied` may
    # stay below the writes: an empty backlog with no progress for 5 s also ends the wait.
    seen: list[int] = []

    def drained(s: PipelineStatus | None) -> bool:
        if s is None:
            return False
        progress = s.progress[table]
        seen.append(progress.applied)
        still = len(seen) > 10 and seen[-11] == progress.applied and progress.backlog == 0
        return progress.applied >= result.write["operations"] or still

    await wait_for(lambda: query_status(handle), drained, args.drain_timeout)
    result.ended = time.time()
    if profile is not None:
        result.series["profile"] = finish_profile(profile)
    await handle.signal("stop")
    with contextlib.suppress(Exception):
        await asyncio.wait_for(handle.result(), 120)
    records = await asyncio.to_thread(read_topic, run.settings.kafka_bootstrap, topic)
    result.changes_in_topic = sum(len(r) for r in records.values())
    commits = await asyncio.to_thread(read_commits, spec.sink.table_uri(run.database, name))
    changes, batches = match_changes(records, commits, lambda p: f"{spec.name}/{topic}/{p}")
    profile_series = result.series.get("profile")
    analyse(result, changes, batches, args.warmup)
    # Caught up: every change capture published was visible when the phase ended.
    result.caught_up = result.applied_total == result.changes_in_topic
    if profile_series is not None:
        result.series["profile"] = profile_series
    result.apply_history = await apply_timings(run.client, spec.workflow_id)
    result.resources = sampler.summary(result.write["started"], result.ended)
    result.cpu_ms_per_change = cpu_per_change(result)
    f = result.freshness_s
    print(
        f"    freshness p50 {f.get('p50', 0):.2f}s p95 {f.get('p95', 0):.2f}s "
        f"p99 {f.get('p99', 0):.2f}s; applied {result.applied_rate:,.0f}/s in the steady "
        f"window; {result.not_visible} not visible at the end; caught up: {result.caught_up}",
        flush=True,
    )
    return result


def cpu_per_change(result: PhaseResult) -> dict[str, float]:
    """Each process's CPU over the phase per change written (the worker's covers capturing all
    of them and applying those it reached; a change not applied by the end is not counted
    twice, so the worker's figure is a lower bound when the lake fell behind)."""
    processes = result.resources.get("processes", {})
    span = result.ended - result.write["started"]
    changes = result.write["operations"]
    if not changes or not processes:
        return {}
    out = {n: p["cpu_cores"] * span * 1000 / changes for n, p in processes.items()}
    out["total"] = sum(out.values())
    return out


def args_seconds(args: argparse.Namespace, rate: float | None) -> float:
    return float(args.saturation_seconds if rate is None else args.seconds)


# ---- profile ----------------------------------------------------------------------------------


def start_profile(run: Run, args: argparse.Namespace) -> dict[str, Any] | None:
    """py-spy on the worker during the saturation phase (after the warm-up), raw stacks."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("    (--profile: py-spy not found; `uv pip install py-spy`)", flush=True)
        return None
    pid = run.stack.service("worker").read_pid()
    out = REPO / "bench" / "results" / f"e2e-profile-{run.tag}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    duration = max(5, int(args.saturation_seconds - args.warmup - 5))
    argv = [
        py_spy, "record", "--pid", str(pid), "--duration", str(duration), "--rate", "50",
        "--format", "raw", "--nonblocking", "--threads", "--output", str(out),
    ]  # fmt: skip

    def delayed() -> subprocess.Popen[bytes]:
        time.sleep(args.warmup)
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    holder: dict[str, Any] = {"out": out}
    thread = threading.Thread(target=lambda: holder.update(proc=delayed()), daemon=True)
    thread.start()
    holder["thread"] = thread
    return holder


def finish_profile(holder: dict[str, Any]) -> dict[str, Any]:
    holder["thread"].join()
    proc = holder["proc"]
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=120)
    if proc.poll() is None:
        proc.terminate()
        proc.wait()
    return summarise_profile(holder["out"])


#: Where a sample of the worker goes: the first stage (in this order) with a frame anywhere in
#: the sample's stack, so library frames (pymongo's BSON decoding, delta-rs, librdkafka calls)
#: count for the Lakeward code that called them. Apply's specific steps come before its catch-all
#: (`apply.py`), capture's before its own (`capture.py`).
STAGES = (
    ("apply: read Kafka", ("lakeward/kafka/consumer.py",)),
    ("apply: decode envelopes", ("decode_envelope (",)),
    ("apply: Delta MERGE + commit", ("lakeward/delta/",)),
    ("apply: plan, type factory, rows", ("lakeward/apply.py", "schema_plan.py", "typefactory.py")),
    ("capture: read MongoDB", ("lakeward/mongo/",)),
    ("capture: encode envelopes", ("lakeward/extjson.py", "encode_envelope (")),
    ("capture: publish, checkpoint", ("lakeward/kafka/producer.py", "lakeward/capture.py")),
)


def _stage(stack: str) -> str:
    for stage, needles in STAGES:
        if any(n in stack for n in needles):
            return stage
    if "temporalio" in stack:
        return "temporal SDK (worker, activity plumbing)"
    return "other (event loop, metrics server)"


def summarise_profile(path: Path) -> dict[str, Any]:
    """Samples per stage and own time per function from py-spy's raw (collapsed) stacks: one
    line per stack, `thread;frame;...;frame count`, root first."""
    if not path.exists():
        return {}
    own: dict[str, int] = {}
    stages: dict[str, int] = {}
    threads: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1] if frames[0].startswith("thread") else "?"
        threads[thread] = threads.get(thread, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        stage = _stage(stack)
        stages[stage] = stages.get(stage, 0) + count
    if not total:
        return {}

    def shares(counts: dict[str, int], limit: int = 25) -> list[tuple[str, float]]:
        return [(k, v / total) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])][:limit]

    return {
        "samples": total,
        "stages": shares(stages),
        "threads": shares(threads, 10),
        "top_own": shares(own),
    }


# ---- the orchestration price on its own -----------------------------------------------------


async def measure_noop(run: Run, activities: int) -> dict[str, Any]:
    queue = f"bench-noop-{run.tag}"
    out: dict[str, Any] = {"activities": activities}
    async with Worker(run.client, task_queue=queue, workflows=[NoopWorkflow], activities=[noop]):

        async def timed(n: int, local: bool) -> float:
            t0 = time.perf_counter()
            await run.client.execute_workflow(
                NoopWorkflow.run,
                NoopInput(n, local),
                id=f"bench-noop-{uuid.uuid4().hex}",
                task_queue=queue,
                execution_timeout=timedelta(minutes=10),
            )
            return time.perf_counter() - t0

        await timed(1, False)  # warm-up: first poll, sandbox import
        empty = [await timed(0, False) for _ in range(5)]
        out["empty_workflow_ms"] = _percentile(empty, 0.5) * 1000
        regular = await timed(activities, False)
        local = await timed(activities, True)
        base = out["empty_workflow_ms"] / 1000
        out["regular_activity_ms"] = (regular - base) / activities * 1000
        out["local_activity_ms"] = (local - base) / activities * 1000
    return out


# ---- the stage ceilings ---------------------------------------------------------------------


def _cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    with contextlib.suppress(psutil.Error):
        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    return 0.0


def measure_ceilings(
    run: Run, sat: PhaseResult, cap: int, batch_sizes: list[int], pids: dict[str, int]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    name = sat.name
    spec = run.spec(name)
    n = min(cap, sat.changes_in_topic)
    if n == 0:
        return {"error": "the saturation phase captured nothing"}
    # 1. A bare change stream over the same changes (full documents, as capture asks).
    workload = Workload("e2e", run.database, name, sat.write["started"], n, full_document=True)
    cpu0, m0 = _cpu(os.getpid()), _cpu(pids.get("mongo"))
    r = measure_bare(run.settings.mongo_uri, workload, 1)
    out["change_stream"] = {
        "changes": r.events,
        "seconds": r.seconds,
        "rate": r.rate,
        "steady_rate": r.steady_rate,
        "cpu_s": _cpu(os.getpid()) - cpu0,
        "mongo_cpu_s": _cpu(pids.get("mongo")) - m0,
    }
    # 2. A bare read_committed consumer over the pipeline's topic.
    topic = spec.topic(run.topic_prefix, name)
    counted: dict[str, Any] = {"events": 0, "first": None, "done": None}
    stop = threading.Event()
    cpu0, k0 = _cpu(os.getpid()), _cpu(pids.get("kafka"))
    t0 = time.monotonic()
    _count_topic(run.settings.kafka_bootstrap, topic, n, t0, counted, stop)
    seconds = counted["done"] or (time.monotonic() - t0)
    steady = None
    if counted["first"] is not None and counted["done"] and counted["done"] > counted["first"]:
        steady = (counted["events"] - 1) / (counted["done"] - counted["first"])
    out["kafka_consume"] = {
        "changes": counted["events"],
        "seconds": seconds,
        "rate": counted["events"] / seconds if seconds else 0.0,
        "steady_rate": steady,
        "cpu_s": _cpu(os.getpid()) - cpu0,
        "kafka_cpu_s": _cpu(pids.get("kafka")) - k0,
    }
    # 3. A bare append of the rows the pipeline wrote, in the pipeline's batch sizes.
    from deltalake import DeltaTable, QueryBuilder, write_deltalake

    source = DeltaTable(spec.sink.table_uri(run.database, name))
    rows = QueryBuilder().register("t", source).execute(f"SELECT * FROM t LIMIT {n}").read_all()
    out["delta_append"] = {}
    for size in batch_sizes:
        target = WORK / run.tag / f"append-{size}"
        shutil.rmtree(target, ignore_errors=True)
        spent, written = 0.0, 0
        cpu0 = _cpu(os.getpid())
        for offset in range(0, rows.num_rows, size):
            chunk = rows.slice(offset, min(size, rows.num_rows - offset))
            t0 = time.perf_counter()
            write_deltalake(str(target), chunk, mode="append")
            spent += time.perf_counter() - t0
            written += chunk.num_rows
        out["delta_append"][str(size)] = {
            "rows": written,
            "seconds": spent,
            "rate": written / spent if spent else 0.0,
            "cpu_s": _cpu(os.getpid()) - cpu0,
        }
        shutil.rmtree(target, ignore_errors=True)
    return out


# ---- output ---------------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    print("\nphase        target/s  wrote/s  applied/s  fresh p50  p95     p99     "
          "capture p95  apply p95  not vis.  batch p50  load1")  # fmt: skip
    for p in report["phases"]:
        f, c, a = p["freshness_s"], p["capture_s"], p["apply_s"]
        load = p["resources"].get("load1", {})
        target = f"{p['target_rate']:,.0f}" if p["target_rate"] else "max"
        print(
            f"{p['name']:12} {target:>8} {p['write'].get('rate', 0):8,.0f} "
            f"{p['applied_rate']:10,.0f} {f.get('p50', 0):9.2f} {f.get('p95', 0):7.2f} "
            f"{f.get('p99', 0):7.2f} {c.get('p95', 0):12.2f} {a.get('p95', 0):10.2f} "
            f"{p['not_visible']:9d} {p['batch_changes'].get('p50', 0):10.0f} "
            f"{load.get('mean', 0):6.1f}"
        )
    print("\nCPU (cores) and peak RSS (MB) per process, per phase")
    for p in report["phases"]:
        procs = p["resources"].get("processes", {})
        cells = "  ".join(
            f"{n} {v['cpu_cores']:.2f}/{v['rss_mb_peak']:.0f}" for n, v in procs.items()
        )
        print(f"  {p['name']:12} {cells}  others {p['resources'].get('others_cores', 0):.2f}")
    print("\nCPU ms per change written, per process (and what 2 cores would carry at that cost)")
    for p in report["phases"]:
        cost = p.get("cpu_ms_per_change", {})
        cells = "  ".join(f"{n} {v:.2f}" for n, v in cost.items())
        carry = f"  -> {2000 / cost['total']:,.0f}/s" if cost.get("total") else ""
        print(f"  {p['name']:12} {cells}{carry}")
    for p in report["phases"]:
        profile = p["series"].get("profile")
        if profile:
            print(f"\nworker profile ({p['name']}, {profile['samples']} samples): by stage")
            for stage, share in profile["stages"]:
                print(f"  {share:6.1%}  {stage}")
            print("  own time, top 15:")
            for frame, share in profile["top_own"][:15]:
                print(f"  {share:6.1%}  {frame}")
    h = [(p["name"], p["apply_history"]) for p in report["phases"]]
    print("\napply activities (from history): exec p50 ms, gap to next start p50 ms, share")
    for name, a in h:
        print(
            f"  {name:12} {a.get('execution_ms', {}).get('p50', 0):8.0f} "
            f"{a.get('gap_to_next_start_ms', {}).get('p50', 0):8.0f} "
            f"{a.get('orchestration_share', 0):6.1%}  ({a.get('batches', 0)} batches)"
        )
    noop = report.get("orchestration", {})
    if noop:
        print(
            f"\nno-op workflow: {noop['regular_activity_ms']:.1f} ms per activity, "
            f"{noop['local_activity_ms']:.1f} ms per local activity, empty workflow "
            f"{noop['empty_workflow_ms']:.0f} ms"
        )
    ceilings = report.get("ceilings", {})
    if ceilings and "error" not in ceilings:
        print("\nstage ceilings (saturation data):")
        for stage in ("change_stream", "kafka_consume"):
            c = ceilings[stage]
            print(f"  {stage:14} {c['rate']:10,.0f}/s  ({c['changes']:,} in {c['seconds']:.1f}s)")
        for size, c in ceilings["delta_append"].items():
            print(f"  append {size:>7} {c['rate']:10,.0f}/s  ({c['rows']:,} rows)")
        print(f"  serial sum     {ceilings.get('serial_rate', 0):10,.0f}/s")


def git_commit() -> str:
    with contextlib.suppress(Exception):
        return subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    return ""


async def main_async(args: argparse.Namespace) -> int:
    settings = StackSettings(
        stack_dir=REPO / ".lakeward" / "bench-stack", lib_dir=REPO / ".lakeward" / "lib", **PORTS
    )
    stack = Stack(settings)
    servers = [s for s in stack.servers if s.name in SERVERS]
    tag = uuid.uuid4().hex[:6]
    started = time.time()
    report: dict[str, Any] = {
        "machine": machine(),
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "args": vars(args),
        "phases": [],
    }
    sampler: ResourceSampler | None = None
    run: Run | None = None
    out = Path(args.json or REPO / "bench" / "results" / f"e2e-{tag}.json")
    try:
        print("starting mongo, kafka, temporal ...", flush=True)
        timings = await asyncio.to_thread(stack.up, servers)
        print("  " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()), flush=True)
        client = await connect(Settings(temporal_address=settings.temporal_address))
        run = Run(settings, tag, stack, client, f"bench_e2e_{tag}", WORK / tag / "lake")
        t0 = time.monotonic()
        worker_pid = start_worker(run)
        if not await worker_polls(run, 120):
            raise RuntimeError(f"the worker did not poll; see {stack.service('worker').log_file}")
        report["worker_start_s"] = time.monotonic() - t0
        print(f"  lakeward worker pid {worker_pid}, polling after {report['worker_start_s']:.1f}s")
        pids = {row.server: row.pid for row in stack.status(servers) if row.pid}
        pids["worker"] = worker_pid
        pids["bench"] = os.getpid()
        sampler = ResourceSampler({n: pids[n] for n in PROCESSES if n in pids})
        sampler.start()

        print("orchestration on its own (no-op workflow) ...", flush=True)
        t0 = time.time()
        report["orchestration"] = await measure_noop(run, args.noop_activities)
        report["orchestration"]["resources"] = sampler.summary(t0, time.time())

        phases: list[tuple[str, float | None]] = [
            (f"rate{int(r)}", float(r)) for r in args.rates.split(",") if r
        ]
        if args.saturation_seconds > 0:
            phases.append(("saturation", None))
        for i, (name, rate) in enumerate(phases):
            print(f"phase {name}", flush=True)
            phase = await run_phase(run, name, rate, args, sampler, seed=100 + i)
            report["phases"].append(asdict(phase))
            save(report, out)
            if name == "saturation" and not phase.error:
                print("stage ceilings on the saturation phase's data ...", flush=True)
                sizes = sorted({1000, int(phase.batch_changes.get("p50", 1000)) or 1000})
                t0 = time.time()
                ceilings = await asyncio.to_thread(
                    measure_ceilings, run, phase, args.ceiling_changes, sizes, pids
                )
                ceilings["resources"] = sampler.summary(t0, time.time())
                rates = [ceilings["change_stream"]["rate"], ceilings["kafka_consume"]["rate"]]
                rates.append(max(c["rate"] for c in ceilings["delta_append"].values()))
                if all(rates):
                    ceilings["serial_rate"] = 1 / sum(1 / r for r in rates)
                    ceilings["min_rate"] = min(rates)
                report["ceilings"] = ceilings
        report["seconds"] = time.time() - started
        print_report(report)
        save(report, out)
        print(f"\nwrote {out}; total {report['seconds']:.0f}s", flush=True)
        if args.plot:
            from bench.e2e_plot import write_svg

            write_svg(report, Path(args.plot))
            print(f"plot: {args.plot}", flush=True)
    finally:
        if sampler is not None:
            sampler.stop()
        if run is not None:
            run.stack.service("worker").stop()
            await cleanup(run, args)
        if not args.keep_stack:
            print("stopping:", ", ".join(stack.down(servers)), flush=True)
    return 0


def save(report: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))


async def worker_polls(run: Run, timeout_s: float) -> bool:
    """Whether the worker polls its workflow and I/O task queues (start-up can take 20 s on a
    loaded machine; a phase started before would measure it)."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    async def polled() -> bool:
        for queue, kind in (
            (run.task_queue, TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW),
            (run.io_task_queue, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY),
        ):
            response = await run.client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=run.client.namespace,
                    task_queue=TaskQueue(name=queue),
                    task_queue_type=kind,
                )
            )
            if not response.pollers:
                return False
        return True

    return bool(await wait_for(polled, bool, timeout_s, every=0.25))


async def cleanup(run: Run, args: argparse.Namespace) -> None:
    """Drop what this run wrote: its database, topics and lake (unless --keep-data)."""
    if args.keep_data:
        return
    with contextlib.suppress(Exception):
        from pymongo import MongoClient

        mongo: MongoClient[Any]
        with MongoClient(run.settings.mongo_uri) as mongo:
            mongo.drop_database(run.database)
    with contextlib.suppress(Exception):
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": run.settings.kafka_bootstrap})
        topics = [t for t in admin.list_topics(timeout=10).topics if run.topic_prefix in t]
        if topics:
            for future in admin.delete_topics(topics).values():
                with contextlib.suppress(Exception):
                    future.result(30)
    shutil.rmtree(WORK / run.tag, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rates", default="1000,5000,10000", help="steady phases, changes/s")
    p.add_argument("--seconds", type=float, default=60, help="writing time per steady phase")
    p.add_argument(
        "--saturation-seconds", type=float, default=90, help="writing time at saturation; 0: skip"
    )
    p.add_argument("--warmup", type=float, default=10, help="seconds left out of the statistics")
    p.add_argument(
        "--drain-timeout", type=float, default=60, help="after writing, wait this long at most"
    )
    p.add_argument("--ceiling-changes", type=int, default=100_000, help="per stage ceiling")
    p.add_argument("--noop-activities", type=int, default=100)
    p.add_argument("--profile", action="store_true", help="py-spy the worker at saturation")
    p.add_argument("--json", help="results file (default bench/results/e2e-<tag>.json)")
    p.add_argument("--plot", help="also write the lag-over-time SVG here")
    p.add_argument("--keep-stack", action="store_true", help="leave the servers running")
    p.add_argument("--keep-data", action="store_true", help="keep database, topics and lake")
    return asyncio.run(main_async(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
