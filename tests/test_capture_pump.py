"""The capture pump overlaps reading with committing, but never publishes out of order, never
publishes past a failed commit, and reports only what committed.

Pure logic: the reader and the publisher are in-memory stand-ins (the real ones are exercised
against mongod and Kafka in test_capture_strategies.py and test_capture_faults.py).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from lakeward.capture import CaptureProgress, SourceCapture, _Pump
from lakeward.events import ChangeEvent, make_seq
from lakeward.kafka.producer import OutgoingRecord, PublishError
from lakeward.mongo.change_stream import ChangeBatch
from workflows.spec import PipelineSpec

SPEC = PipelineSpec.model_validate(
    {
        "name": "pump",
        "source": {"uri": "mongodb://h/?replicaSet=rs0", "database": "shop",
                   "collections": ["orders"]},
    }
)  # fmt: skip


def _batch(n: int) -> ChangeBatch:
    events = [
        ChangeEvent(op="c", database="shop", collection="orders", key=f"{n}-{i}",
                    key_type="string", seq=make_seq(n, i, 0), after={"_id": f"{n}-{i}"})
        for i in range(3)
    ]  # fmt: skip
    return ChangeBatch(events=events, resume_token={"_data": f"token-{n}"})


class FakeReader:
    """Hands out numbered batches, then idle ones."""

    def __init__(self, batches: int) -> None:
        self.read = 0
        self._batches = batches

    async def next_batch(self, max_records: int, max_wait_s: float, idle_s: float) -> ChangeBatch:
        await asyncio.sleep(0)
        if self.read >= self._batches:
            return ChangeBatch(events=[], resume_token={"_data": f"token-{self.read}"})
        self.read += 1
        return _batch(self.read)


class FakePublisher:
    """Commits one at a time, and commits batch k only once batch k+1 has been read (up to
    `overlap_until`): a pump that did not read while committing would never get past batch 1.
    Fails the commit numbered `fail_at`."""

    def __init__(
        self, reader: FakeReader, fail_at: int | None = None, overlap_until: int = 0
    ) -> None:
        self.committed: list[bytes] = []
        self.publishes = 0
        self.overlapped: list[bool] = []
        self._reader = reader
        self._fail_at = fail_at
        self._overlap_until = overlap_until
        self._busy = threading.Lock()

    def publish(self, records: list[OutgoingRecord], checkpoint: OutgoingRecord) -> dict:
        assert self._busy.acquire(blocking=False), "two transactions in flight"
        try:
            self.publishes += 1
            k = self.publishes
            if k < self._overlap_until:
                deadline = time.monotonic() + 10
                while self._reader.read <= k and time.monotonic() < deadline:
                    threading.Event().wait(0.01)
                self.overlapped.append(self._reader.read > k)
            if self._fail_at == k:
                raise PublishError("commit failed")
            assert checkpoint.value is not None
            self.committed.append(checkpoint.value)
            return {}
        finally:
            self._busy.release()


def _pump(reader: FakeReader, publisher: FakePublisher, reports: list[int]) -> _Pump:
    capture = SourceCapture(SPEC, "change_stream", lambda token: reader, "unused:9092", "t")  # type: ignore[arg-type, return-value]
    progress = CaptureProgress()

    def on_batch(p: CaptureProgress) -> None:
        reports.append(p.events)

    return _Pump(capture, reader, publisher, None, progress, on_batch)  # type: ignore[arg-type]


def _checkpoints(publisher: FakePublisher) -> list[Any]:
    return [value.decode() for value in publisher.committed]


async def test_batches_commit_in_order_while_the_next_one_is_read() -> None:
    reader = FakeReader(batches=5)
    publisher = FakePublisher(reader, overlap_until=5)
    reports: list[int] = []
    pump = _pump(reader, publisher, reports)
    await pump.run(lambda: len(publisher.committed) >= 5)
    assert _checkpoints(publisher) == [f'{{"_data": "token-{n}"}}' for n in range(1, 6)]
    # Batch k+1 was read while batch k committed.
    assert publisher.overlapped == [True, True, True, True]
    # Progress only ever counts committed batches, and reaches all of them.
    assert reports == sorted(reports)
    assert reports[-1] == 15
    assert pump._progress.batches == 5


async def test_a_failed_commit_stops_the_pump_before_the_next_batch_is_published() -> None:
    reader = FakeReader(batches=5)
    publisher = FakePublisher(reader, fail_at=2, overlap_until=3)
    reports: list[int] = []
    pump = _pump(reader, publisher, reports)
    with pytest.raises(PublishError, match="commit failed"):
        await pump.run(lambda: False)
    # Batch 1 committed; batch 2 failed; batch 3 was read but never published.
    assert _checkpoints(publisher) == ['{"_data": "token-1"}']
    assert publisher.publishes == 2
    assert reader.read == 3
    assert pump._progress.events == 3
    assert max(reports, default=0) == 3
