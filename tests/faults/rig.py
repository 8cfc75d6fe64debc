"""The fault suite's moving parts: a steady write load, the independent source-vs-lake
comparison, and the record each fault scenario leaves for the summary table.

The comparison reads MongoDB with pymongo and the Delta table with delta-rs (rows decoded by
`lakeward.apply.documents`), never through Lakeward's reconciler: a bug shared by the pipeline
and its own checker could not hide here.
"""

from __future__ import annotations

import collections
import dataclasses
import random
import threading
import time
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from lakeward.apply import documents

#: Changes per second the load writer aims at (the issue asks for a steady, modest load).
WRITE_RATE = 100.0


@dataclasses.dataclass
class Outcome:
    """One row of the summary table."""

    fault: str
    recovered: bool = False
    #: How long the fault lasted: injection until it is over (a kill: until the process is gone).
    fault_s: float | None = None
    #: Fault over (process killed, server back, space freed) -> a change written at that moment
    #: is in the Delta table: the pipeline progresses again.
    recovery_s: float | None = None
    #: Fault over -> the table equals the source again (the writer stops once progress resumed).
    matched_s: float | None = None
    lost: int | None = None  # in the source, not in the table (or differing there)
    doubled: int | None = None  # rows beyond the first per _id, plus rows of deleted documents
    changes: int = 0  # changes the writer made during the scenario
    note: str = ""

    def row(self) -> str:
        def num(value: float | int | None) -> str:
            if value is None:
                return "-"
            return f"{value:.1f}" if isinstance(value, float) else str(value)

        cells = [self.fault, "yes" if self.recovered else "NO", num(self.fault_s),
                 num(self.recovery_s),
                 num(self.matched_s), num(self.lost), num(self.doubled), str(self.changes),
                 " ".join(self.note.split()).replace("|", "/")]  # fmt: skip
        return "| " + " | ".join(cells) + " |"


SUMMARY_HEADER = (
    "| fault | recovered | fault s | recovery s | matched s | lost | doubled | changes | note |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


@dataclasses.dataclass
class Comparison:
    lost: int  # source documents missing from the table
    differing: int  # in both, but with other values
    extra: int  # live rows whose document is not in the source (deleted or never written)
    doubled: int  # rows beyond the first per _id

    @property
    def equal(self) -> bool:
        return not (self.lost or self.differing or self.extra or self.doubled)


def compare(source: dict[str, dict], rows: pa.Table | None) -> Comparison:
    """Source documents (by str(_id)) against every row of the current-state table."""
    if rows is None:
        return Comparison(lost=len(source), differing=0, extra=0, doubled=0)
    ids = [str(i) for i in rows.column("_id").to_pylist()]
    docs = documents(rows)
    doubled = sum(n - 1 for n in collections.Counter(ids).values())
    live = {i: d for i, d in zip(ids, docs, strict=True) if d is not None}
    return Comparison(
        lost=len(source.keys() - live.keys()),
        differing=sum(1 for i in source.keys() & live.keys() if source[i] != live[i]),
        extra=len(live.keys() - source.keys()),
        doubled=doubled,
    )


def source_documents(mongo_uri: str, database: str, collection: str) -> dict[str, dict]:
    with MongoClient(mongo_uri) as mongo:
        return {str(doc["_id"]): doc for doc in mongo[database][collection].find()}


def lake_table(uri: str, storage_options: dict[str, str] | None) -> pa.Table | None:
    """Every row of the Delta table (tombstones included), or None before its first commit."""
    if "://" not in uri and not (Path(uri) / "_delta_log").exists():
        return None
    try:
        return DeltaTable(uri, storage_options=storage_options).to_pyarrow_table()
    except Exception as exc:  # a table not created yet reads as "no rows"
        if "no files in log segment" in str(exc).lower() or "not a delta table" in str(exc).lower():
            return None
        if "non-2xx status code" in str(exc):
            # The store answers with errors (SeaweedFS gives 500s just after a restart): the
            # check reads "not there yet" and the caller polls again.
            return None
        raise


class LoadWriter:
    """Inserts, updates and deletes documents at about `rate` changes/s until paused.

    Writes that fail while a fault is on (mongod down, no primary) are counted and skipped:
    whether such a write happened is decided by MongoDB, and the comparison reads MongoDB, so
    an ambiguous write cannot make the check wrong.
    """

    def __init__(self, mongo_uri: str, database: str, collection: str, rate: float = WRITE_RATE):
        self.mongo_uri, self.database, self.collection = mongo_uri, database, collection
        self.rate = rate
        self.changes = 0
        self.failed_writes = 0
        self._next = 0
        self._rng = random.Random(7)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def start(self) -> None:
        assert self._thread is None, "already writing"
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="fault-load", daemon=True)
        self._thread.start()

    def pause(self) -> None:
        if self._thread is None:
            return
        self._stopping.set()
        self._thread.join()
        self._thread = None
        assert self.error is None, self.error

    def _run(self) -> None:
        try:
            with MongoClient(self.mongo_uri, serverSelectionTimeoutMS=2000) as mongo:
                docs = mongo[self.database][self.collection]
                interval = 1.0 / self.rate
                due = time.monotonic()
                while not self._stopping.is_set():
                    try:
                        self._one_change(docs)
                        self.changes += 1
                    except PyMongoError:
                        self.failed_writes += 1
                        self._stopping.wait(0.2)  # the server is away: do not spin
                        due = time.monotonic()
                    due += interval
                    self._stopping.wait(max(0.0, due - time.monotonic()))
        except BaseException as exc:  # surfaced by pause()
            self.error = exc

    def _one_change(self, docs) -> None:
        roll = self._rng.random()
        if roll < 0.5 or self._next < 10:
            key = f"d{self._next}"
            self._next += 1
            docs.replace_one({"_id": key}, {"_id": key, "v": 0, "tags": ["new"]}, upsert=True)
        elif roll < 0.9:
            key = f"d{self._rng.randrange(self._next)}"
            docs.update_one({"_id": key}, {"$inc": {"v": 1}, "$set": {"at": self._next}})
        else:
            docs.delete_one({"_id": f"d{self._rng.randrange(self._next)}"})
