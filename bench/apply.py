"""Apply throughput and commit latency, side by side in one run: Lakeward's BatchApplier reading
from Kafka, a plain `write_deltalake` append of the same rows (the ceiling) and a naive
MERGE per batch (no collapsing per key, no txn, no seq guard), on a base table of 1M rows.

Starts Kafka of the bench stack (.lakeward/bench-stack, port 24092) unless it runs, builds the
base table once (cached in .lakeward/bench-apply/), publishes each workload before timing, then
measures every variant in a fresh subprocess on its own copy of the base table, so peak RSS is
per variant. Stops only the servers it started.

    .venv/bin/python -m bench.apply --base-rows 1000000 --changes 200000 --json out.json
    .venv/bin/python -m bench.apply --base-rows 20000 --changes 5000      # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import inspect
import json
import multiprocessing
import platform
import random
import resource
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/apply.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable, write_deltalake

import lakeward.apply as apply_module
from bench.capture import PORTS, REPO, _cpu_seconds, machine
from lakeward.apply import BatchApplier
from lakeward.delta.maintenance import ROW_GROUPS
from lakeward.delta.table import TxnTable
from lakeward.events import ChangeEvent, canonical_key, encode_envelope, make_seq
from lakeward.generate import DocumentFactory
from lakeward.generate.ids import IdFactory
from lakeward.generate.options import IdType
from lakeward.kafka.admin import ensure_topic
from lakeward.kafka.consumer import ConsumedRecord, PartitionReader
from lakeward.kafka.producer import OutgoingRecord, TransactionalPublisher
from lakeward.settings import StackSettings
from lakeward.stack import Stack

CACHE = REPO / ".lakeward" / "bench-apply"
PIPELINE = "bench-apply"
SEED = 1
WORKLOADS = ("insert", "update", "hot")
VARIANTS = ("lakeward", "append", "merge")
#: Cluster seconds in the seq of the base rows; workload changes are a day later, so newer.
BASE_SECONDS = 1_700_000_000
WORKLOAD_SECONDS = BASE_SECONDS + 86_400
#: Changes per Kafka transaction when publishing a workload (capture's default batch).
PUBLISH_BATCH = 1000
#: Documents drawn from one seeded random stream: any chunk of a workload can be built alone.
BLOCK = 10_000

Record = tuple[bytes, bytes]  # (Kafka key, envelope)


# ---- how apply is built: the one place to adapt when BatchApplier or its tables change ------


def _schemas() -> tuple[pa.Schema, pa.Schema]:
    """(current-state, dead-letter) table schemas, as lakeward.apply sees them now."""
    from lakeward.delta import table

    current = getattr(apply_module, "CURRENT_STATE_SCHEMA", table.CURRENT_STATE_SCHEMA)
    dead = getattr(apply_module, "DEAD_LETTER_SCHEMA", table.DEAD_LETTER_SCHEMA)
    return current, dead


def make_applier(reader: Any, table_uri: str, dead_letters_uri: str) -> BatchApplier:
    """Lakeward's applier as a worker builds it (activities/pipeline.py), on local tables."""
    current, dead = _schemas()
    return BatchApplier(
        PIPELINE, reader, TxnTable(table_uri, current), TxnTable(dead_letters_uri, dead)
    )


class MemoryReader:
    """A PartitionReader stand-in over records held in memory (one partition, offsets from
    `first_offset`): builds table rows through the real applier without Kafka."""

    def __init__(self, topic: str, records: list[Record], first_offset: int = 0) -> None:
        self.topic = topic
        self._records = records
        self._first = first_offset

    def partitions(self, timeout_s: float = 10.0) -> list[int]:
        return [0]

    def read_batch(
        self, start: dict[int, int | None], max_records: int, max_wait_s: float, idle_s: float
    ) -> list[ConsumedRecord]:
        offset = start.get(0)
        begin = 0 if offset is None else offset - self._first
        chosen = self._records[begin : begin + max_records]
        self._next = begin + len(chosen)
        return [
            ConsumedRecord(self.topic, 0, self._first + begin + i, key, value, 0)
            for i, (key, value) in enumerate(chosen)
        ]

    def backlog(self, timeout_s: float = 2.0) -> int:
        return len(self._records) - getattr(self, "_next", 0)

    def backlog_by_partition(self, timeout_s: float = 2.0) -> dict[int, int]:
        return {0: self.backlog(timeout_s)}

    def close(self) -> None:
        pass


def rows_via_applier(records: list[Record], first_offset: int, scratch: Path) -> pa.Table:
    """The rows the applier writes for `records` (distinct keys), in record order: applied in
    one batch to an empty scratch table and read back. The table stays in `scratch/table`."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    reader = MemoryReader(f"{PIPELINE}-build", records, first_offset)
    applier = make_applier(reader, str(scratch / "table"), str(scratch / "dead_letters"))
    outcome = applier.apply_once(len(records), 0.0, 0.0)
    if outcome.applied != len(records) or outcome.dead_letters:
        raise RuntimeError(
            f"building rows: {outcome.applied} of {len(records)} applied, "
            f"{outcome.dead_letters} dead-lettered (see {scratch / 'dead_letters'})"
        )
    rows = DeltaTable(str(scratch / "table")).to_pyarrow_table()
    if rows.num_rows != len(records):
        raise RuntimeError(f"building rows: {rows.num_rows} rows for {len(records)} changes")
    return rows.sort_by("_kafka_offset")


def schema_fingerprint(work: Path) -> str:
    """A short hash of the schema apply writes for the first base documents: cached tables are
    reused only while it holds."""
    rows = rows_via_applier(list(changes("base", 200, 0, 0)), 0, work / "probe")
    shutil.rmtree(work / "probe")
    return hashlib.sha256(str(rows.schema).encode()).hexdigest()[:10]


# ---- the data -------------------------------------------------------------------------------


@functools.cache
def _ids() -> IdFactory:
    """The generator's ObjectIds for SEED: document number n has `_ids().object_id(n)`."""
    return IdFactory(SEED, IdType.OBJECTID, random.Random(0))


def targets(kind: str, n: int, base_rows: int, hot_keys: int) -> list[int]:
    """The base document number each change of an update workload writes."""
    if kind == "update":  # n distinct keys, uniform over the base table
        return random.Random(f"update-keys:{SEED}").sample(range(base_rows), n)
    hot = random.Random(f"hot-keys:{SEED}").sample(range(base_rows), hot_keys)
    pick = random.Random(f"hot-picks:{SEED}")
    return [hot[int(pick.random() * hot_keys)] for _ in range(n)]


def changes(kind: str, n: int, base_rows: int, hot_keys: int, start: int = 0) -> Iterator[Record]:
    """Changes `start`..n-1 of a workload, as envelopes keyed as capture keys them.

    `base`: documents 0..n-1 inserted. `insert`: n new documents, ids after the base's (time
    ordered, as ObjectIds are). `update` / `hot`: full after-images (what capture publishes with
    update look-ups) of base documents from `targets`; the same documents in both, only `_id`
    differs. Documents come from `lakeward.generate` (drift stage 0), reseeded every BLOCK
    documents so that a process can build any chunk alone.
    """
    ids = _ids()
    rng = random.Random()
    docs = DocumentFactory(SEED, rng)
    if kind == "base":
        seconds, op, numbers = BASE_SECONDS, "c", range(n)
    elif kind == "insert":
        seconds, op, numbers = WORKLOAD_SECONDS, "c", range(base_rows, base_rows + n)
    else:
        seconds, op, numbers = WORKLOAD_SECONDS, "u", targets(kind, n, base_rows, hot_keys)
    stream = "update" if op == "u" else kind
    for i in range(start - start % BLOCK, n):
        if i % BLOCK == 0:
            rng.seed(f"{stream}:{SEED}:{i // BLOCK}")
        id_ = ids.object_id(numbers[i])
        tick = i if kind == "base" else base_rows + i
        doc = docs.document(id_, base_rows + i if op == "u" else numbers[i], tick)
        if i < start:
            continue  # drawn only to advance the block's random stream
        key, key_type = canonical_key(id_)
        event = ChangeEvent(
            op=op, database="bench", collection="orders", key=key, key_type=key_type,
            seq=make_seq(seconds, i, 0), after=doc, source_ts_ms=seconds * 1000,
            document_key={"_id": id_},
        )  # fmt: skip
        yield event.kafka_key, encode_envelope(event, PIPELINE, seconds * 1000)


def chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


@dataclass
class Setup:
    base_rows: int
    changes: int
    hot_keys: int
    build_chunk: int
    build_procs: int
    target_file_mb: int
    fingerprint: str

    @property
    def base_dir(self) -> Path:
        rg = ROW_GROUPS.max_row_group_size  # the layout maintenance writes
        name = f"base-{self.base_rows}-{self.target_file_mb}mb-rg{rg}-seed{SEED}-{self.fingerprint}"
        return CACHE / name

    def rows_dir(self, kind: str) -> Path:
        hot = f"-keys{self.hot_keys}" if kind == "hot" else ""
        name = f"rows-{kind}{hot}-{self.changes}-of-{self.base_rows}-seed{SEED}-{self.fingerprint}"
        return CACHE / name


def _build_part(task: tuple[str, int, int, int, int, int, str]) -> str:
    """Rows of changes start..stop-1 through the applier into `folder/part-<start>.parquet`; the
    scratch table of the first part stays (`folder/scratch-0/table`)."""
    kind, n, base_rows, hot_keys, start, stop, folder = task
    records = list(islice(changes(kind, n, base_rows, hot_keys, start), stop - start))
    scratch = Path(folder) / f"scratch-{start}"
    rows = rows_via_applier(records, start, scratch)
    part = Path(folder) / f"part-{start:09d}.parquet"
    pq.write_table(rows, part)
    if start:
        shutil.rmtree(scratch)
    return str(part)


def build_parts(setup: Setup, kind: str, n: int, folder: Path) -> list[Path]:
    """All n changes of `kind` as applier rows, `build_chunk` per part, `build_procs` at once."""
    tasks = [
        (kind, n, setup.base_rows, setup.hot_keys, s, min(s + setup.build_chunk, n), str(folder))
        for s in range(0, n, setup.build_chunk)
    ]
    t0 = time.monotonic()
    context = multiprocessing.get_context("spawn")  # deltalake's runtime does not survive fork
    with ProcessPoolExecutor(max(1, setup.build_procs), mp_context=context) as pool:
        parts = []
        for part in pool.map(_build_part, tasks):
            parts.append(Path(part))
            done = min(len(parts) * setup.build_chunk, n)
            print(f"    {kind}: {done:,} of {n:,} rows, {time.monotonic() - t0:.0f}s", flush=True)
    return parts


def build_base(setup: Setup) -> dict[str, Any]:
    """The base table (cached): the applier's rows, the first part's table (created by the
    applier) appended to with `write_deltalake`, then compacted to the target file size as
    Lakeward's maintenance does, checkpointed and vacuumed."""
    done = setup.base_dir / "built.json"
    if done.exists():
        return json.loads(done.read_text())
    building = setup.base_dir.with_name(setup.base_dir.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    t0 = time.monotonic()
    parts = build_parts(setup, "base", setup.base_rows, building)
    table = building / "table"
    (building / "scratch-0" / "table").rename(table)
    for part in parts[1:]:
        write_deltalake(str(table), pq.read_table(part), mode="append", schema_mode="merge")
    delta = DeltaTable(str(table))
    delta.optimize.compact(target_size=setup.target_file_mb * 2**20, writer_properties=ROW_GROUPS)
    delta.create_checkpoint()
    delta.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    for leftover in building.iterdir():
        if leftover.is_dir() and leftover != table:
            shutil.rmtree(leftover)
        elif leftover.is_file():
            leftover.unlink()
    delta = DeltaTable(str(table))
    info = {
        "rows": delta.count(),
        "files": len(delta.file_uris()),
        "bytes": sum(p.stat().st_size for p in table.rglob("*.parquet")),
        "build_s": round(time.monotonic() - t0, 1),
    }
    (building / "built.json").write_text(json.dumps(info))
    shutil.rmtree(setup.base_dir, ignore_errors=True)
    building.rename(setup.base_dir)
    return info


def build_rows(setup: Setup, kind: str) -> Path:
    """The workload's rows as apply writes them, in Parquet parts (cached): what the append and
    naive-MERGE variants write."""
    out = setup.rows_dir(kind)
    if (out / "done").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if kind == "hot":
        # Apply collapses a hot key's changes, so a scratch table cannot give one row per
        # change: take the update workload's rows (the same documents) with the hot keys.
        keys = iter(targets("hot", setup.changes, setup.base_rows, setup.hot_keys))
        for part in sorted(build_rows(setup, "update").glob("part-*.parquet")):
            rows = pq.read_table(part)
            ids = pa.array([str(_ids().object_id(k)) for k in islice(keys, rows.num_rows)])
            column = rows.schema.get_field_index("_id")
            rows = rows.set_column(column, rows.schema.field(column), ids)
            pq.write_table(rows, out / part.name)
    else:
        build_parts(setup, kind, setup.changes, out)
        shutil.rmtree(out / "scratch-0")
    (out / "done").touch()
    return out


def publish(setup: Setup, kind: str, bootstrap: str, topic: str) -> float:
    """Publishes the workload into `topic` (one partition) in transactions of PUBLISH_BATCH
    changes, as capture does; returns seconds taken."""
    ensure_topic(bootstrap, topic, partitions=1)
    checkpoints = f"{topic}.checkpoints"
    ensure_topic(bootstrap, checkpoints, partitions=1)
    publisher = TransactionalPublisher(bootstrap, f"{topic}-publisher")
    t0 = time.monotonic()
    try:
        records = changes(kind, setup.changes, setup.base_rows, setup.hot_keys)
        for i, chunk in enumerate(chunks(records, PUBLISH_BATCH)):
            publisher.publish(
                [OutgoingRecord(topic, key, value) for key, value in chunk],
                OutgoingRecord(checkpoints, b"bench", str(i).encode()),
            )
    finally:
        publisher.close()
    return time.monotonic() - t0


# ---- one measurement (a child process) ------------------------------------------------------


@dataclass
class Measurement:
    workload: str
    variant: str
    batch: int
    changes: int  # the workload's N
    applied: int = 0  # changes written (Lakeward: records read past the txn versions)
    seconds: float = 0.0  # Lakeward: all apply_once calls; baselines: all Delta calls
    batches: int = 0
    batch_p50_ms: float = 0.0
    batch_p95_ms: float = 0.0
    batch_max_ms: float = 0.0
    #: Lakeward: time per batch inside the Delta table's methods (txn read, MERGE, commit)
    delta_p50_ms: float | None = None
    delta_p95_ms: float | None = None
    #: Lakeward: time per batch in the Kafka reader (the rest is decoding, collapsing, the type
    #: factory and the schema plan, in Python)
    read_p50_ms: float | None = None
    cpu_s: float = 0.0  # user + system of the measuring process, during the measurement
    broker_cpu_s: float | None = None  # the Kafka broker's, during the measurement
    peak_rss_mb: float = 0.0  # VmHWM of the measuring process, start-up included
    start_rss_mb: float = 0.0  # its RSS just before the first batch
    rows_after: int | None = None
    files_after: int | None = None
    dead_letters: int = 0
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.applied / self.seconds if self.seconds else 0.0


class CallTimer:
    """Seconds spent in the public methods of one object (outermost calls only)."""

    def __init__(self, obj: object) -> None:
        self.seconds = 0.0
        self._depth = 0
        for name, _ in inspect.getmembers(type(obj), inspect.isfunction):
            if not name.startswith("_"):
                setattr(obj, name, self._timed(getattr(obj, name)))

    def _timed(self, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._depth += 1
            t0 = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.seconds += time.perf_counter() - t0

        return timed


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def _row_batches(rows_dir: Path, size: int) -> Iterator[pa.Table]:
    """The prepared rows in order, cut into tables of `size` rows (the last may be shorter)."""
    pending: list[pa.Table] = []
    held = 0
    for part in sorted(rows_dir.glob("part-*.parquet")):
        for batch in pq.ParquetFile(part).iter_batches(batch_size=size):
            pending.append(pa.Table.from_batches([batch]))
            held += batch.num_rows
            while held >= size:
                joined = pa.concat_tables(pending, promote_options="permissive")
                yield joined.slice(0, size)
                rest = joined.slice(size)
                pending, held = ([rest], rest.num_rows) if rest.num_rows else ([], 0)
    if held:
        yield pa.concat_tables(pending, promote_options="permissive")


def measure(spec: dict[str, Any]) -> Measurement:
    """Runs one variant on its table copy until the workload is applied or the time is up."""
    m = Measurement(spec["workload"], spec["variant"], spec["batch"], spec["changes"])
    latencies: list[float] = []
    in_delta: list[float] = []
    in_read: list[float] = []
    deadline = time.monotonic() + spec["timeout_s"]
    uri = spec["table"]
    try:
        if m.variant == "lakeward":
            reader = PartitionReader(spec["bootstrap"], spec["topic"])
            applier = make_applier(reader, uri, spec["dead_letters"])
            timer, read_timer = CallTimer(applier.table), CallTimer(reader)
            reader.partitions()  # a worker's consumer and table handle are warm: not timed
            applier.table.ensure()
            timer.seconds = read_timer.seconds = 0.0
            m.start_rss_mb, cpu0 = _status_mb("VmRSS"), _cpu_self()
            idle = 0
            while m.applied < m.changes and time.monotonic() < deadline:
                t0, d0, r0 = time.perf_counter(), timer.seconds, read_timer.seconds
                outcome = applier.apply_once(m.batch, spec["max_wait_s"], spec["idle_s"])
                fresh = outcome.records - outcome.skipped_already_applied
                if not fresh:
                    idle += 1
                    if idle >= 3:
                        m.error = f"no records after {m.applied} changes"
                        break
                    continue
                latencies.append(time.perf_counter() - t0)
                in_delta.append(timer.seconds - d0)
                in_read.append(read_timer.seconds - r0)
                m.applied += fresh
                m.dead_letters += outcome.dead_letters
                for name in ("schema_changes", "coerced", "kept_as_json"):
                    count = getattr(outcome, name, 0)
                    if count:
                        m.extra[name] = m.extra.get(name, 0) + count
            reader.close()
        else:
            table = DeltaTable(uri)
            key = [c for c in ("_id", "_id_type") if c in table.schema().to_arrow().names]
            predicate = " AND ".join(f"t.{c} = s.{c}" for c in key)
            m.start_rss_mb, cpu0 = _status_mb("VmRSS"), _cpu_self()
            for rows in _row_batches(Path(spec["rows"]), m.batch):
                if time.monotonic() >= deadline:
                    break
                t0 = time.perf_counter()
                if m.variant == "append":
                    write_deltalake(table, rows, mode="append", schema_mode="merge")
                    table.update_incremental()
                else:
                    merger = table.merge(
                        rows, predicate, source_alias="s", target_alias="t", merge_schema=True
                    )
                    merger.when_matched_update_all().when_not_matched_insert_all().execute()
                latencies.append(time.perf_counter() - t0)
                m.applied += rows.num_rows
        m.cpu_s = _cpu_self() - cpu0
        if m.applied < m.changes and not m.error:
            m.error = f"timeout: {m.applied} of {m.changes} in {spec['timeout_s']:.0f}s"
    except Exception as exc:  # reported in the result; the rate covers what was applied
        m.error = repr(exc)[:300]
    m.peak_rss_mb = _status_mb("VmHWM")
    m.seconds = sum(latencies)
    m.batches = len(latencies)
    m.batch_p50_ms = _percentile(latencies, 0.5) * 1000
    m.batch_p95_ms = _percentile(latencies, 0.95) * 1000
    m.batch_max_ms = max(latencies, default=0.0) * 1000
    if in_delta:
        m.delta_p50_ms = _percentile(in_delta, 0.5) * 1000
        m.delta_p95_ms = _percentile(in_delta, 0.95) * 1000
        m.read_p50_ms = _percentile(in_read, 0.5) * 1000
    with contextlib.suppress(Exception):
        after = DeltaTable(uri)
        m.rows_after = after.count()
        m.files_after = len(after.file_uris())
    return m


def run_child(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    m = measure(spec)
    Path(spec["result"]).write_text(json.dumps(asdict(m)))
    return 0


# ---- the run --------------------------------------------------------------------------------


def expected_rows(workload: str, variant: str, base_rows: int, n: int) -> int:
    return base_rows + n if workload == "insert" or variant == "append" else base_rows


def run_measurement(
    spec: dict[str, Any], work: Path, broker_pid: int | None, keep: bool
) -> Measurement:
    name = f"{spec['workload']}-{spec['variant']}-{spec['batch']}"
    folder = work / name
    shutil.copytree(Path(spec["base"]), folder / "table")
    spec = {**spec, "table": str(folder / "table"), "dead_letters": str(folder / "dead_letters"),
            "result": str(folder / "result.json")}  # fmt: skip
    (folder / "spec.json").write_text(json.dumps(spec))
    broker0 = _cpu_seconds(broker_pid)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.apply", "--child", str(folder / "spec.json")],
            cwd=REPO,
            timeout=spec["timeout_s"] + 300,
        )
        exit_note = f"measurement process exited {proc.returncode}"
    except subprocess.TimeoutExpired:
        exit_note = "measurement process killed: no result 300 s after its timeout"
    broker1 = _cpu_seconds(broker_pid)
    result = folder / "result.json"
    if result.exists():
        m = Measurement(**json.loads(result.read_text()))
    else:
        m = Measurement(spec["workload"], spec["variant"], spec["batch"], spec["changes"],
                        error=exit_note)  # fmt: skip
    if spec["variant"] == "lakeward" and broker0 is not None and broker1 is not None:
        m.broker_cpu_s = broker1 - broker0
    if not keep:
        shutil.rmtree(folder)
    return m


def print_table(results: list[Measurement]) -> None:
    print(
        f"\n{'workload':8} {'variant':8} {'batch':>6} {'changes':>8} {'sec':>7} {'changes/s':>10} "
        f"{'/append':>7} {'p50 ms':>8} {'p95 ms':>8} {'kafka50':>7} {'delta50':>7} {'cpu s':>6} "
        f"{'rss MB':>6} {'files':>5}  note"
    )
    ceiling = {(r.workload, r.batch): r.rate for r in results if r.variant == "append"}
    for r in results:
        ratio = ceiling.get((r.workload, r.batch))
        rel = f"{r.rate / ratio:7.2f}" if ratio else "      -"
        delta = f"{r.delta_p50_ms:7.0f}" if r.delta_p50_ms is not None else "      -"
        read = f"{r.read_p50_ms:7.0f}" if r.read_p50_ms is not None else "      -"
        files = f"{r.files_after:5d}" if r.files_after is not None else "    -"
        note = (r.error or "")[:100]
        if r.dead_letters:
            note = f"{r.dead_letters} dead letters {note}"
        if "rows_mismatch" in r.extra:
            note = f"rows {r.rows_after}, expected {r.extra['rows_mismatch']} {note}"
        print(
            f"{r.workload:8} {r.variant:8} {r.batch:6d} {r.applied:8d} {r.seconds:7.2f} "
            f"{r.rate:10,.0f} {rel} {r.batch_p50_ms:8.0f} {r.batch_p95_ms:8.0f} {read} {delta} "
            f"{r.cpu_s:6.1f} {r.peak_rss_mb:6.0f} {files}  {note}"
        )


def print_aims(results: list[Measurement]) -> None:
    """Issue 4's aims: updates at >= half the append ceiling, peak memory under 1 GB."""
    ceiling = {(r.workload, r.batch): r.rate for r in results if r.variant == "append"}
    lines = []
    for r in results:
        if r.variant != "lakeward" or r.workload == "insert":
            continue
        top = ceiling.get((r.workload, r.batch))
        ratio = f"{r.rate / top:.2f}x append ({top:,.0f}/s)" if top else "no append ceiling"
        met = "yes" if top and r.rate >= top / 2 else "no"
        memory = "yes" if r.peak_rss_mb < 1024 else "no"
        lines.append(
            f"{r.workload:8} batch {r.batch:6d}: {r.rate:,.0f}/s = {ratio}: {met}; "
            f"peak RSS {r.peak_rss_mb:,.0f} MB: {memory}"
        )
    if lines:
        print("\naims: updates >= 0.5x the append ceiling; peak RSS < 1024 MB")
        print("\n".join(lines))


def versions(stack: Stack, servers: list[Any]) -> dict[str, str]:
    from importlib.metadata import version

    found = {"python": platform.python_version()}
    for pkg in ("deltalake", "pyarrow", "confluent-kafka", "lakeward"):
        with contextlib.suppress(Exception):
            found[pkg] = version(pkg)
    for row in stack.status(servers):
        found[row.server] = row.version
    with contextlib.suppress(Exception):
        found["commit"] = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    return found


def _note_running(already: list[str], server: Any, message: str) -> None:
    if message == "already running":  # not ours to stop
        already.append(server.name)


def _delete_topics(bootstrap: str, topics: list[str]) -> None:
    from confluent_kafka.admin import AdminClient

    futures = AdminClient({"bootstrap.servers": bootstrap}).delete_topics(topics)
    for future in futures.values():
        with contextlib.suppress(Exception):
            future.result(30)


def main_run(args: argparse.Namespace) -> int:
    workloads = [w for w in args.workloads.split(",") if w]
    variants = [v for v in args.variants.split(",") if v]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    unknown = (set(workloads) - set(WORKLOADS)) | (set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown workload or variant: {', '.join(sorted(unknown))}")
    if args.hot_keys > args.base_rows or args.hot_keys < 1:
        raise SystemExit("--hot-keys must be between 1 and --base-rows")
    if args.changes > args.base_rows and ("update" in workloads or "hot" in workloads):
        raise SystemExit("--changes must not exceed --base-rows (updates hit distinct keys)")

    settings = StackSettings(
        stack_dir=REPO / ".lakeward" / "bench-stack", lib_dir=REPO / ".lakeward" / "lib", **PORTS
    )
    stack = Stack(settings)
    servers = [s for s in stack.servers if s.name == "kafka"]
    already: list[str] = []
    tag = uuid.uuid4().hex[:6]
    work = CACHE / "runs" / tag
    topics: list[str] = []
    results: list[Measurement] = []
    started = time.monotonic()
    try:
        print("starting kafka ...", flush=True)
        stack.up(servers, on_event=lambda s, msg: _note_running(already, s, msg))
        bootstrap = settings.kafka_bootstrap
        broker_pid = next((row.pid for row in stack.status(servers)), None)
        CACHE.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True)
        setup = Setup(args.base_rows, args.changes, args.hot_keys, args.build_chunk,
                      args.build_procs, args.target_file_mb, schema_fingerprint(work))  # fmt: skip
        print(f"base table: {args.base_rows:,} rows, schema {setup.fingerprint}", flush=True)
        base = build_base(setup)
        print(f"  {json.dumps(base)}", flush=True)
        info = {
            "machine": machine(),
            "versions": versions(stack, servers),
            "args": vars(args),
            "base": base,
            "fingerprint": setup.fingerprint,
        }
        print(json.dumps(info), flush=True)
        for kind in workloads:
            print(f"workload {kind}, N={args.changes:,}", flush=True)
            rows_dir = build_rows(setup, kind) if {"append", "merge"} & set(variants) else None
            topic = ""
            if "lakeward" in variants:
                topic = f"bench-apply-{tag}-{kind}"
                topics += [topic, f"{topic}.checkpoints"]
                took = publish(setup, kind, bootstrap, topic)
                print(f"  published in {took:.1f}s into {topic}", flush=True)
            for batch in batch_sizes:
                for variant in variants:
                    spec = {
                        "workload": kind, "variant": variant, "batch": batch,
                        "changes": args.changes, "base": str(setup.base_dir / "table"),
                        "rows": str(rows_dir) if rows_dir else None, "bootstrap": bootstrap,
                        "topic": topic, "max_wait_s": args.max_wait_ms / 1000, "idle_s": 10.0,
                        "timeout_s": args.timeout,
                    }  # fmt: skip
                    print(f"  {variant} batch {batch} ...", flush=True)
                    m = run_measurement(spec, work, broker_pid, args.keep_tables)
                    expected = expected_rows(kind, variant, args.base_rows, m.applied)
                    if m.rows_after is not None and m.rows_after != expected and not m.error:
                        m.extra["rows_mismatch"] = expected
                    results.append(m)
                    print(
                        f"    {m.applied} changes in {m.seconds:.2f}s = {m.rate:,.0f}/s, "
                        f"batch p50 {m.batch_p50_ms:.0f} ms, peak RSS {m.peak_rss_mb:.0f} MB "
                        f"{m.error or ''}",
                        flush=True,
                    )
        print_table(results)
        print_aims(results)
        print(f"\ntotal {time.monotonic() - started:.0f}s")
        if args.json:
            out = [{**asdict(r), "rate": r.rate} for r in results]
            Path(args.json).write_text(json.dumps({**info, "results": out}, indent=2))
    finally:
        if topics:
            with contextlib.suppress(Exception):
                _delete_topics(settings.kafka_bootstrap, topics)
        if not args.keep_tables:
            shutil.rmtree(work, ignore_errors=True)
        mine = [s for s in servers if s.name not in already]
        if mine and not args.keep_stack:
            print("stopping:", ", ".join(stack.down(mine)) or "-", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--base-rows",
        type=int,
        default=1_000_000,
        help="rows in the base table (default 1000000); built once and cached",
    )
    p.add_argument(
        "--changes",
        type=int,
        default=200_000,
        help="N changes per workload (default 200000); at most --base-rows",
    )
    p.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help="comma-separated, from: insert (N new keys), update (N distinct keys,\n"
        "uniform over the base), hot (N updates to --hot-keys keys)\n"
        f"(default {','.join(WORKLOADS)})",
    )
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated, from: lakeward (BatchApplier from Kafka), append\n"
        "(write_deltalake append of the same rows: the ceiling), merge (naive\n"
        f"MERGE per batch) (default {','.join(VARIANTS)})",
    )
    p.add_argument(
        "--batch-sizes",
        default="1000,20000",
        help="changes per batch, comma-separated; every variant runs at each\n"
        "(default 1000,20000: the default batch and a backlog's adaptive one)",
    )
    p.add_argument(
        "--hot-keys", type=int, default=100, help="distinct keys of the hot workload (default 100)"
    )
    p.add_argument(
        "--build-chunk",
        type=int,
        default=20_000,
        help="changes per applier batch when building the base table and the\n"
        "baselines' rows; bounds each build process's memory (default 20000)",
    )
    p.add_argument(
        "--build-procs",
        type=int,
        default=2,
        help="processes building those rows at once (default 2); cached afterwards",
    )
    p.add_argument(
        "--target-file-mb",
        type=int,
        default=128,
        help="the base table is compacted to files of this size, as the pipeline's\n"
        "maintenance does (default 128, maintenance.target_file_mb's default)",
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=1000.0,
        help="apply_once max_wait_s, in ms: how long a batch may wait to fill after\n"
        "its first record; a backlog fills batches sooner (default 1000)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds per measurement; a slower variant stops there and reports\n"
        "the rate of what it applied so far (default 600)",
    )
    p.add_argument("--json", help="also write the results here (e.g. bench/results/apply.json)")
    p.add_argument(
        "--keep-tables",
        action="store_true",
        help="keep each measurement's table copy in .lakeward/bench-apply/runs/",
    )
    p.add_argument(
        "--keep-stack", action="store_true", help="leave Kafka running if this run started it"
    )
    p.add_argument(
        "--child",
        metavar="SPEC",
        help="internal: one measurement from a spec file (run starts these)",
    )
    args = p.parse_args(argv)
    if args.child:
        return run_child(args.child)
    return main_run(args)


if __name__ == "__main__":
    sys.exit(main())
