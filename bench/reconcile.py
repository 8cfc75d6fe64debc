"""Reconciliation time and peak memory (issue 6), side by side in one run: Lakeward's Merkle
reconciler (lakeward.reconcile.engine, called in-process as its activities call it), a naive
full comparison (read both sides, sort, compare, with the same normal form and hashes) and the
raw ceiling (one full MongoDB scan of raw BSON that does nothing; a raw Parquet scan of the
table is shown beside it), for 0, 10 and 10,000 differences.

Starts MongoDB of the bench stack (.lakeward/bench-stack, port 24017) unless it runs. The table
is bench/apply.py's base table (the applier's own rows for the generator's documents, compacted
as maintenance does; cached in .lakeward/bench-apply/); MongoDB gets the same documents once
(cached in database `bench_reconcile`). Differences are made on the MongoDB side (a third
deleted, a third inserted, the rest updated) and undone after they are measured. Every
measurement runs in a fresh subprocess, so peak RSS is per variant. Verification and repair
are not timed: they wait for a running pipeline and touch only the differing keys.

    .venv/bin/python -m bench.reconcile --docs 1000000 --json out.json
    .venv/bin/python -m bench.reconcile --docs 20000 --diffs 0,10,1000       # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/reconcile.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bson import ObjectId
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient
from pymongo.read_concern import ReadConcern

from bench.apply import (
    BLOCK,
    CACHE,
    SEED,
    Setup,
    _ids,
    _status_mb,
    build_base,
    schema_fingerprint,
    versions,
)
from bench.capture import PORTS, REPO, machine
from lakeward.generate import DocumentFactory
from lakeward.settings import StackSettings
from lakeward.stack import Stack

DATABASE = "bench_reconcile"
VARIANTS = ("lakeward", "fast", "naive", "raw", "raw-lake")
#: Ranges of leaves, as plan_reconcile cuts them (activities/reconcile.py).
LEAVES_PER_RANGE = 16


# ---- the data -------------------------------------------------------------------------------


def base_documents(n: int) -> Iterator[dict[str, Any]]:
    """Documents 0..n-1 exactly as bench.apply's `base` changes carry them (same seeds)."""
    ids = _ids()
    rng = random.Random()
    factory = DocumentFactory(SEED, rng)
    for i in range(n):
        if i % BLOCK == 0:
            rng.seed(f"base:{SEED}:{i // BLOCK}")
        yield factory.document(ids.object_id(i), i, i)


def load_mongo(client: MongoClient[Any], n: int, fingerprint: str) -> dict[str, Any]:
    """The n documents in `bench_reconcile.orders_<n>` (cached while the marker says clean)."""
    db = client[DATABASE]
    name = f"orders_{n}"
    marker = db["meta"].find_one({"_id": name})
    wanted = {"fingerprint": fingerprint, "state": "clean"}
    clean = marker is not None and all(marker.get(k) == v for k, v in wanted.items())
    if clean and db[name].estimated_document_count() == n:
        return {"loaded_s": 0.0, "cached": True}
    db[name].drop()
    db["meta"].delete_one({"_id": name})
    t0 = time.monotonic()
    batch: list[dict[str, Any]] = []
    for done, doc in enumerate(base_documents(n), 1):
        batch.append(doc)
        if len(batch) == 2000:
            db[name].insert_many(batch, ordered=False)
            batch = []
        if done % 100_000 == 0:
            print(f"    mongo: {done:,} of {n:,}, {time.monotonic() - t0:.0f}s", flush=True)
    if batch:
        db[name].insert_many(batch, ordered=False)
    db["meta"].replace_one({"_id": name}, {"_id": name, **wanted}, upsert=True)
    return {"loaded_s": round(time.monotonic() - t0, 1), "cached": False}


class Differences:
    """`count` differences on the MongoDB side, undone by `undo`: a third of the picked documents
    deleted, a third given a neighbour (a copy under a new ObjectId of the same second, so
    inserts spread over the key range), the rest updated (`revision` + 1)."""

    def __init__(self, client: MongoClient[Any], n: int, count: int) -> None:
        self.coll = client[DATABASE][f"orders_{n}"]
        self.meta = client[DATABASE]["meta"]
        self.name = f"orders_{n}"
        rng = random.Random(f"diffs:{count}:{SEED}")
        picks = [_ids().object_id(i) for i in rng.sample(range(n), count)]
        third = count // 3
        self.deleted, self.copied, self.updated = (
            picks[:third], picks[third : 2 * third], picks[2 * third :]
        )  # fmt: skip
        self.inserted = [
            ObjectId(oid.binary[:4] + rng.randbytes(5) + oid.binary[9:]) for oid in self.copied
        ]
        self.originals: dict[Any, dict[str, Any]] = {}

    def apply(self) -> None:
        self.meta.update_one({"_id": self.name}, {"$set": {"state": "dirty"}})
        touched = [*self.deleted, *self.copied, *self.updated]
        for start in range(0, len(touched), 1000):
            found = self.coll.find({"_id": {"$in": touched[start : start + 1000]}})
            self.originals.update((d["_id"], d) for d in found)
        if self.deleted:
            self.coll.delete_many({"_id": {"$in": self.deleted}})
        if self.copied:
            self.coll.insert_many(
                [
                    {**self.originals[o], "_id": new}
                    for o, new in zip(self.copied, self.inserted, strict=False)
                ]
            )
        if self.updated:
            self.coll.update_many({"_id": {"$in": self.updated}}, {"$inc": {"revision": 1}})

    def undo(self) -> None:
        if self.inserted:
            self.coll.delete_many({"_id": {"$in": self.inserted}})
        if self.deleted:
            self.coll.insert_many([self.originals[o] for o in self.deleted])
        for oid in self.updated:
            self.coll.replace_one({"_id": oid}, self.originals[oid])
        self.meta.update_one({"_id": self.name}, {"$set": {"state": "clean"}})

    @property
    def count(self) -> int:
        return len(self.deleted) + len(self.inserted) + len(self.updated)


# ---- one measurement (in a child process) ---------------------------------------------------


def _spec(job: dict[str, Any]) -> Any:
    from workflows.spec import PipelineSpec

    return PipelineSpec.model_validate(
        {
            "name": "bench-reconcile",
            "source": {
                "uri": job["mongo_uri"], "database": DATABASE, "collections": [job["collection"]]
            },
            "sink": {"uri": str(Path(job["table"]).parent)},
            "reconcile": {"leaf_size": job["leaf_size"], "parallelism": job["parallelism"]},
        }
    )  # fmt: skip


def _engine(job: dict[str, Any]) -> Any:
    from lakeward.reconcile.engine import CollectionReconciler

    engine = CollectionReconciler(
        _spec(job), job["collection"], job["mongo_uri"], "", "bench", {}, settle_timeout_s=0
    )
    engine.uri = job["table"]  # the cached table, not <sink>/<db>/<collection>
    return engine


async def run_lakeward(job: dict[str, Any]) -> dict[str, Any]:
    """What ReconcileWorkflow does up to verification: plan, hash both sides of every range
    (`parallelism` ranges at once, the two sides of a range together), compare, and list the
    keys under the mismatching leaves."""
    engine = _engine(job)
    t0 = time.monotonic()
    plan = await engine.plan(job["leaf_size"], job.get("mode", "deep"))
    if plan.mode != job.get("mode", "deep"):
        raise SystemExit(f"asked for {job.get('mode')} mode, the plan runs {plan.mode}")
    uppers: list[str | None] = [*plan.bounds, None]
    ranges = [
        (None if s == 0 else uppers[s - 1], uppers[s : s + LEAVES_PER_RANGE])
        for s in range(0, len(uppers), LEAVES_PER_RANGE)
    ]
    t_plan = time.monotonic()
    bound = asyncio.Semaphore(job["parallelism"])
    mismatching: list[tuple[str | None, str | None]] = []
    documents = 0

    async def compare(lower: str | None, leaf_uppers: list[str | None]) -> None:
        nonlocal documents
        async with bound:
            source, lake = await asyncio.gather(
                engine.hash_source(plan.version, lower, leaf_uppers, mode=plan.mode),
                asyncio.to_thread(engine.hash_lake, plan.version, lower, leaf_uppers, plan.mode),
            )
        documents += sum(h.count for h in source)
        lowers = [lower, *leaf_uppers[:-1]]
        for low, high, s, k in zip(lowers, leaf_uppers, source, lake, strict=True):
            if (s.count, s.hash) != (k.count, k.hash):
                mismatching.append((low, high))

    await asyncio.gather(*(compare(low, ups) for low, ups in ranges))
    t_scan = time.monotonic()
    found = await engine.candidates(plan.version, mismatching, plan.mode) if mismatching else None
    t_end = time.monotonic()
    return {
        "seconds": t_end - t0,
        "plan_s": t_plan - t0,
        "first_scan_s": t_scan - t0,
        "after_scan_s": t_end - t_scan,
        "documents": documents,
        "leaves": len(uppers),
        "ranges": len(ranges),
        "mismatching_leaves": len(mismatching),
        "reread_documents": found.documents if found else 0,
        "found": len(found.keys) if found else 0,
    }


async def run_naive(job: dict[str, Any]) -> dict[str, Any]:
    """Read both sides fully (the same normal form and document hash), sort each by MongoDB's
    key order, merge: every key whose hash differs or that one side lacks. A differing source
    document is planned again alone, as the reconciler does, before it counts."""
    from lakeward.events import canonical_key
    from lakeward.mongo.reconcile import SourceReader
    from lakeward.reconcile.compare import key_order
    from lakeward.reconcile.hashing import document_hash
    from lakeward.reconcile.keys import order_key
    from lakeward.reconcile.lake import LakeSide, latest_version
    from lakeward.reconcile.normal import lake_documents, one_by_one, source_documents

    engine = _engine(job)
    policy = engine.spec.schema_policy
    t0 = time.monotonic()
    version = latest_version(job["table"], {})
    assert version is not None
    schema = LakeSide(job["table"], {}, version).schema

    async def source_side() -> tuple[list[tuple[Any, Any, bytes]], dict[Any, dict[str, Any]]]:
        entries: list[tuple[Any, Any, bytes]] = []
        docs_by_key: dict[Any, dict[str, Any]] = {}
        async with SourceReader(job["mongo_uri"], DATABASE, job["collection"]) as reader:
            async for docs in reader.documents(None, None):
                normal = await asyncio.to_thread(source_documents, docs, schema, policy)
                for doc, form in zip(docs, normal, strict=True):
                    key = canonical_key(doc["_id"])
                    digest = document_hash(form) if form is not None else b""
                    entries.append((order_key(doc["_id"]), key, digest))
                    docs_by_key[key] = doc  # kept for the second planning of differing keys
        return entries, docs_by_key

    def lake_side() -> list[tuple[Any, Any, bytes]]:
        lake = LakeSide(job["table"], {}, version)
        entries = []
        for rows, orders in lake.rows(None, None):
            keys = zip(
                rows.column("_id").to_pylist(), rows.column("_id_type").to_pylist(), strict=False
            )
            docs = lake_documents(rows)
            for order, key, doc in zip(orders, keys, docs, strict=True):
                if doc is not None:
                    entries.append((order, key, document_hash(doc)))
        return entries

    (source, docs_by_key), lake = await asyncio.gather(source_side(), asyncio.to_thread(lake_side))
    t_read = time.monotonic()
    source.sort(key=lambda e: (e[0], e[1]))
    lake.sort(key=lambda e: (e[0], e[1]))
    differing = []
    i = j = 0
    while i < len(source) or j < len(lake):
        a = source[i] if i < len(source) else None
        b = lake[j] if j < len(lake) else None
        if b is None or (a is not None and (a[0], a[1]) < (b[0], b[1])):
            differing.append(a[1])  # type: ignore[index]
            i += 1
        elif a is None or (b[0], b[1]) < (a[0], a[1]):
            differing.append(b[1])
            j += 1
        else:
            if a[2] != b[2]:
                differing.append(a[1])
            i += 1
            j += 1
    suspects = set(differing)
    lake_hash = {e[1]: e[2] for e in lake if e[1] in suspects}
    again = [docs_by_key[k] for k in differing if k in docs_by_key]
    for doc, form in zip(again, one_by_one(again, schema, policy), strict=True):
        key = canonical_key(doc["_id"])
        if form is not None and lake_hash.get(key) == document_hash(form):
            suspects.discard(key)
    differing = sorted(suspects, key=key_order)
    t_end = time.monotonic()
    return {
        "seconds": t_end - t0,
        "first_scan_s": t_read - t0,
        "after_scan_s": t_end - t_read,
        "documents": len(source),
        "found": len(differing),
    }


def run_raw(job: dict[str, Any]) -> dict[str, Any]:
    """One full scan of the collection as raw BSON (not decoded), majority read concern."""
    client: MongoClient[RawBSONDocument] = MongoClient(
        job["mongo_uri"], document_class=RawBSONDocument
    )
    coll = client[DATABASE].get_collection(job["collection"], read_concern=ReadConcern("majority"))
    t0 = time.monotonic()
    count = size = 0
    for doc in coll.find({}, batch_size=10_000):
        count += 1
        size += len(doc.raw)
    seconds = time.monotonic() - t0
    client.close()
    return {"seconds": seconds, "documents": count, "bson_mb": size / 2**20}


def run_raw_lake(job: dict[str, Any]) -> dict[str, Any]:
    """One full scan of the table's Parquet files into Arrow (all columns), nothing else."""
    from lakeward.delta.read import open_dataset
    from lakeward.reconcile.lake import latest_version

    t0 = time.monotonic()
    version = latest_version(job["table"], {})
    assert version is not None
    rows = sum(b.num_rows for b in open_dataset(job["table"], {}, version).to_batches())
    return {"seconds": time.monotonic() - t0, "documents": rows}


def child(job: dict[str, Any]) -> dict[str, Any]:
    cpu0 = time.process_time()
    variant = job["variant"]
    if variant in ("lakeward", "fast"):
        out = asyncio.run(run_lakeward({**job, "mode": "fast" if variant == "fast" else "deep"}))
    elif variant == "naive":
        out = asyncio.run(run_naive(job))
    elif variant == "raw":
        out = run_raw(job)
    else:
        out = run_raw_lake(job)
    out["cpu_s"] = time.process_time() - cpu0
    # VmHWM is this process's own high-water mark; ru_maxrss also counts the parent's RSS at
    # the fork before exec (Linux keeps it across execve), so it is only an upper bound here.
    out["peak_rss_mb"] = _status_mb("VmHWM")
    out["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """One variant in a fresh interpreter; its result plus the load average around it."""
    load0 = os.getloadavg()[0]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.reconcile", "--child", json.dumps(job)],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    result: dict[str, Any] = {"variant": job["variant"], "diffs": job["diffs"]}
    if proc.returncode != 0:
        result["error"] = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        sys.stderr.write(proc.stderr)
    else:
        result.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    result["load_before"] = round(load0, 2)
    result["load_after"] = round(os.getloadavg()[0], 2)
    return result


# ---- the run --------------------------------------------------------------------------------


def print_table(results: list[dict[str, Any]], raw_s: float | None) -> None:
    print(
        f"\n{'diffs':>6} {'variant':9} {'sec':>8} {'x raw':>6} {'scan s':>8} {'after s':>8} "
        f"{'found':>6} {'cpu s':>7} {'rss MB':>7} {'load':>10}  note"
    )
    for r in results:
        ratio = f"{r['seconds'] / raw_s:.1f}" if raw_s and "seconds" in r else "-"
        note = r.get("error") or (
            f"{r['mismatching_leaves']} of {r['leaves']} leaves, re-read {r['reread_documents']}"
            if r["variant"] in ("lakeward", "fast")
            else ""
        )
        print(
            f"{r['diffs']:>6} {r['variant']:9} {r.get('seconds', 0):>8.2f} {ratio:>6} "
            f"{r.get('first_scan_s', r.get('seconds', 0)):>8.2f} {r.get('after_scan_s', 0):>8.3f} "
            f"{r.get('found', '-')!s:>6} {r.get('cpu_s', 0):>7.1f} {r.get('peak_rss_mb', 0):>7.0f} "
            f"{r['load_before']:>4.1f}-{r['load_after']:<4.1f}  {note}"
        )


def main_run(args: argparse.Namespace) -> int:
    diffs = [int(d) for d in args.diffs.split(",") if d]
    variants = [v for v in args.variants.split(",") if v]
    if set(variants) - set(VARIANTS):
        raise SystemExit(f"unknown variant: {', '.join(sorted(set(variants) - set(VARIANTS)))}")
    if max(diffs, default=0) > args.docs:
        raise SystemExit("--diffs must not exceed --docs")
    settings = StackSettings(
        stack_dir=REPO / ".lakeward" / "bench-stack", lib_dir=REPO / ".lakeward" / "lib", **PORTS
    )
    stack = Stack(settings)
    servers = [s for s in stack.servers if s.name == "mongo"]
    already: list[str] = []
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    try:
        print("starting mongo ...", flush=True)
        stack.up(
            servers,
            on_event=lambda s, msg: already.append(s.name) if msg == "already running" else None,
        )
        work = CACHE / "runs" / f"reconcile-{uuid.uuid4().hex[:6]}"
        work.mkdir(parents=True)
        setup = Setup(args.docs, 0, 1, args.build_chunk, args.build_procs, args.target_file_mb,
                      schema_fingerprint(work))  # fmt: skip
        work.rmdir()
        print(
            f"table: {args.docs:,} rows, schema {setup.fingerprint} (cached or built)", flush=True
        )
        base = build_base(setup)
        print(f"  {json.dumps(base)}", flush=True)
        client: MongoClient[Any] = MongoClient(settings.mongo_uri)
        loaded = load_mongo(client, args.docs, setup.fingerprint)
        print(f"mongo: {json.dumps(loaded)}", flush=True)
        info = {
            "machine": machine(), "versions": versions(stack, servers), "args": vars(args),
            "base": base, "mongo": loaded,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }  # fmt: skip
        print(json.dumps(info), flush=True)
        job_base = {
            "mongo_uri": settings.mongo_uri, "collection": f"orders_{args.docs}",
            "table": str(setup.base_dir / "table"), "leaf_size": args.leaf_size,
            "parallelism": args.parallelism,
        }  # fmt: skip
        raw_s: float | None = None
        for count in diffs:
            made = Differences(client, args.docs, count)
            made.apply()
            try:
                print(f"{made.count} differences", flush=True)
                for variant in variants:
                    r = measure({**job_base, "variant": variant, "diffs": made.count})
                    r["expected"] = made.count
                    if variant == "raw" and "seconds" in r:
                        raw_s = min(raw_s or r["seconds"], r["seconds"])
                    results.append(r)
                    print(f"  {json.dumps(r)}", flush=True)
            finally:
                made.undo()
        client.close()
        print_table(results, raw_s)
        for r in results:
            if r["variant"] in ("lakeward", "fast", "naive") and r.get("found") != r["expected"]:
                print(f"!! {r['variant']} found {r.get('found')} of {r['expected']} differences")
        print(f"\ntotal {time.monotonic() - started:.0f}s")
        if args.json:
            Path(args.json).write_text(json.dumps({**info, "results": results}, indent=2))
    finally:
        mine = [s for s in servers if s.name not in already]
        if mine and not args.keep_stack:
            print("stopping:", ", ".join(stack.down(mine)) or "-", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument(
        "--docs",
        type=int,
        default=1_000_000,
        help="documents on each side (default 1000000); data built once and cached",
    )
    p.add_argument(
        "--diffs",
        default="0,10,10000",
        help="differences per round, comma-separated (default 0,10,10000)",
    )
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"what to measure (default {','.join(VARIANTS)})",
    )
    p.add_argument(
        "--leaf-size",
        type=int,
        default=1000,
        help="documents per leaf (default 1000, reconcile.leaf_size's default)",
    )
    p.add_argument(
        "--parallelism",
        type=int,
        default=4,
        help="ranges hashed at once (default 4, reconcile.parallelism's default)",
    )
    p.add_argument(
        "--build-chunk",
        type=int,
        default=20_000,
        help="rows per table-building process task (default 20000)",
    )
    p.add_argument(
        "--build-procs",
        type=int,
        default=2,
        help="processes building the table (default 2); cached afterwards",
    )
    p.add_argument(
        "--target-file-mb",
        type=int,
        default=128,
        help="table file size after compaction (default 128, maintenance's)",
    )
    p.add_argument("--json", help="write every figure to this file")
    p.add_argument("--keep-stack", action="store_true", help="leave MongoDB running")
    args = p.parse_args(argv)  # fmt: skip
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return 0
    return main_run(args)


if __name__ == "__main__":
    raise SystemExit(main())
