"""Writes generated batches into a MongoDB collection at a paced rate (the I/O half).

The only module of `lakeward.generate` that imports pymongo.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from pymongo import DeleteOne, InsertOne, MongoClient, ReplaceOne, UpdateOne
from pymongo.client_session import ClientSession
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, ConfigurationError, InvalidURI, PyMongoError
from pymongo.results import BulkWriteResult

from lakeward.generate.generator import Batch, Operation
from lakeward.generate.options import OpKind

__all__ = [
    "GenerateError",
    "GenerateResult",
    "Pacer",
    "open_collection",
    "redact_uri",
    "requests",
    "run",
]

_MAX_ERROR_SAMPLES = 5
_TRANSACTION_ATTEMPTS = 3


class GenerateError(RuntimeError):
    """The generator could not talk to MongoDB (as opposed to single rejected writes)."""


@dataclass
class GenerateResult:
    """What a run did. `counts` are operations sent per kind, the initial load excluded.

    `inserted`, `matched`, `modified` and `deleted` are what the server acknowledged (initial
    load included), so a collection that was empty before holds ``inserted - deleted`` documents.
    `rate` is operations per second over the rate-limited (non-initial) phase.
    """

    counts: dict[str, int] = field(default_factory=lambda: {k.value: 0 for k in OpKind})
    initial: int = 0
    inserted: int = 0
    matched: int = 0
    modified: int = 0
    deleted: int = 0
    batches: int = 0
    transactions: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    ops_elapsed_s: float = 0.0

    @property
    def operations(self) -> int:
        return sum(self.counts.values())

    @property
    def rate(self) -> float:
        return self.operations / self.ops_elapsed_s if self.ops_elapsed_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "operations": self.operations, "rate": round(self.rate, 1)}


class Pacer:
    """Token-bucket pacing: on average `rate` operations per second, bursts of at most `burst_s`.

    Call :meth:`wait` after each write with the number of operations written. When the writer
    falls behind (a slow server), it may catch up for at most `burst_s` worth of operations; older
    debt is forgiven so a stall is not followed by a long flood.
    """

    def __init__(
        self,
        rate: float | None,
        *,
        burst_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self.burst_s = burst_s
        self._clock = clock
        self._sleep = sleep
        self._start = clock()
        self._done = 0

    def wait(self, operations: int) -> None:
        if self.rate is None:
            return
        self._done += operations
        due = self._start + self._done / self.rate
        lag = self._clock() - due
        if lag > self.burst_s:
            self._start += lag - self.burst_s
        elif lag < 0:
            self._sleep(-lag)


def redact_uri(uri: str) -> str:
    """`uri` with any password replaced, safe for messages and logs."""
    return re.sub(r"^([a-z+]+://[^:/@]*):[^@/]*@", r"\1:***@", uri)


def open_collection(
    uri: str, database: str, collection: str, *, drop: bool = False, timeout_s: float = 5.0
) -> tuple[MongoClient[Any], Collection[Any]]:
    """Connect, check that the server answers, and return the client and the collection.

    Raises :class:`GenerateError` (naming the redacted URI and what to do) when the URI is invalid
    or the server cannot be reached within `timeout_s`. With `drop`, the collection is dropped.
    """
    where = redact_uri(uri)
    options: dict[str, Any] = {}
    if "serverselectiontimeoutms" not in uri.lower():  # an explicit URI option wins
        options["serverSelectionTimeoutMS"] = int(timeout_s * 1000)
    try:
        client: MongoClient[Any] = MongoClient(uri, **options)
    except (InvalidURI, ConfigurationError, ValueError) as exc:
        raise GenerateError(f"invalid MongoDB URI {where}: {exc}") from None
    try:
        client.admin.command("ping")
        coll = client[database][collection]
        if drop:
            coll.drop()
    except PyMongoError as exc:
        client.close()
        raise GenerateError(
            f"cannot reach MongoDB at {where} ({type(exc).__name__}); "
            "start it with `lakeward stack up` or pass --uri"
        ) from exc
    return client, coll


def run(
    collection: Collection[Any],
    batches: Iterable[Batch],
    *,
    rate: float | None = None,
    on_batch: Callable[[Batch, GenerateResult], None] | None = None,
    prefetch: int = 4,
) -> GenerateResult:
    """Write `batches` (from :meth:`Generator.batches`) into `collection`.

    Non-initial batches are paced to `rate` operations per second (None: as fast as possible).
    Each batch is one unordered ``bulk_write``; transactional batches run in a session transaction
    (the collection must be on a replica set). Rejected writes are counted in the result's
    `errors`, not raised; a failure to reach the server raises :class:`GenerateError`.

    Up to `prefetch` batches are generated ahead on a thread while earlier ones are written
    (0: generate inline); batches are still written one at a time, in order.
    """
    result = GenerateResult()
    started = time.monotonic()
    ops_started: float | None = None
    pacer: Pacer | None = None
    source = _Prefetch(batches, prefetch) if prefetch > 0 else None
    try:
        for batch in source if source is not None else batches:
            if not batch.initial and pacer is None:
                ops_started = time.monotonic()
                pacer = Pacer(rate)
            _write(collection, batch, result)
            result.batches += 1
            if batch.initial:
                result.initial += len(batch.operations)
            else:
                for kind, n in batch.kinds.items():
                    result.counts[kind.value] += n
            if on_batch is not None:
                on_batch(batch, result)
            if pacer is not None:
                pacer.wait(len(batch.operations))
    except PyMongoError as exc:
        raise GenerateError(
            f"writing to {collection.full_name} failed after {result.batches} batches: "
            f"{type(exc).__name__}: {_short(exc)}"
        ) from exc
    finally:
        if source is not None:
            source.close()
    now = time.monotonic()
    result.elapsed_s = now - started
    result.ops_elapsed_s = now - ops_started if ops_started is not None else 0.0
    return result


class _Prefetch:
    """Iterates `batches` on a thread, up to `depth` ahead of the consumer.

    Generating a batch is CPU work in Python and writing it mostly waits on the socket (pymongo
    releases the GIL there), so overlapping the two nearly doubles throughput when unpaced.
    """

    _DONE = object()

    def __init__(self, batches: Iterable[Batch], depth: int) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._fill, args=(iter(batches),), name="lakeward-generate", daemon=True
        )
        self._thread.start()

    def __iter__(self) -> Iterator[Batch]:
        while True:
            item = self._queue.get()
            if item is self._DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _fill(self, batches: Iterator[Batch]) -> None:
        try:
            for batch in batches:
                if not self._put(batch):
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(exc)
            return
        self._put(self._DONE)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False


def requests(operations: list[Operation]) -> list[Any]:
    """The pymongo bulk requests for `operations`, in order."""
    out: list[Any] = []
    for op in operations:
        if op.kind is OpKind.INSERT:
            out.append(InsertOne(op.document))
        elif op.kind is OpKind.UPDATE:
            assert op.update is not None
            out.append(UpdateOne({"_id": op.id}, op.update))
        elif op.kind is OpKind.REPLACE:
            out.append(ReplaceOne({"_id": op.id}, op.document))
        else:
            out.append(DeleteOne({"_id": op.id}))
    return out


def _write(collection: Collection[Any], batch: Batch, result: GenerateResult) -> None:
    # Per-document order survives ordered=False: pymongo groups an unordered bulk write into
    # inserts, then updates/replaces, then deletes, and the generator never targets an id before
    # inserting it nor after deleting it, so grouping cannot reorder two writes of one document.
    reqs = requests(batch.operations)
    if batch.transactional:
        _write_transaction(collection, reqs, result)
        return
    try:
        _add(result, collection.bulk_write(reqs, ordered=False))
    except BulkWriteError as exc:
        details = exc.details
        result.inserted += details.get("nInserted", 0)
        result.matched += details.get("nMatched", 0)
        result.modified += details.get("nModified", 0)
        result.deleted += details.get("nRemoved", 0)
        errors = details.get("writeErrors", [])
        result.errors += len(errors)
        for error in errors[: _MAX_ERROR_SAMPLES - len(result.error_samples)]:
            result.error_samples.append(_describe(error.get("code"), error.get("errmsg", "")))


def _write_transaction(
    collection: Collection[Any], reqs: list[Any], result: GenerateResult
) -> None:
    # Not ClientSession.with_transaction: it retries TransientTransactionError for up to two
    # minutes, and a rejected write inside an unordered bulk write surfaces as exactly that
    # (the server aborts the transaction, the driver's next command gets NoSuchTransaction).
    # Inside a transaction the bulk write is ordered, so the first rejected write is reported
    # as itself, and only genuinely transient errors are retried, a few times.
    client = collection.database.client
    for attempt in range(1, _TRANSACTION_ATTEMPTS + 1):
        with client.start_session() as session:  # ending the session aborts an open transaction
            try:
                session.start_transaction()
                written = collection.bulk_write(reqs, ordered=True, session=session)
                _commit(session)
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                result.errors += max(1, len(errors))
                if len(result.error_samples) < _MAX_ERROR_SAMPLES:
                    first = errors[0] if errors else {}
                    message = _describe(first.get("code"), first.get("errmsg", _short(exc)))
                    result.error_samples.append(f"transaction aborted: {message}")
                return
            except PyMongoError as exc:
                transient = exc.has_error_label("TransientTransactionError")
                if transient and attempt < _TRANSACTION_ATTEMPTS:
                    continue
                raise
        _add(result, written)
        result.transactions += 1
        return


def _commit(session: ClientSession) -> None:
    # Retrying the commit (never the writes) is safe when its outcome is unknown.
    for attempt in range(1, _TRANSACTION_ATTEMPTS + 1):
        try:
            session.commit_transaction()
            return
        except PyMongoError as exc:
            unknown = exc.has_error_label("UnknownTransactionCommitResult")
            if not unknown or attempt == _TRANSACTION_ATTEMPTS:
                raise


def _short(exc: BaseException, limit: int = 300) -> str:
    """The error's message, cut: pymongo messages can embed whole server replies."""
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "..."


def _add(result: GenerateResult, written: BulkWriteResult) -> None:
    result.inserted += written.inserted_count
    result.matched += written.matched_count
    result.modified += written.modified_count
    result.deleted += written.deleted_count


def _describe(code: int | None, message: str) -> str:
    if code == 11000:
        return (
            f"{message} (ids derive from the seed: writing the same seed into the same "
            "collection twice collides; drop the collection first or use another seed)"
        )
    return message
