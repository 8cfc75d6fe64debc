"""Fault injection under a steady write load, one fault at a time, on real servers.

Every scenario asserts what a user sees: the pipeline progresses again after the fault, and an
independent comparison (pymongo against delta-rs, not Lakeward's reconciler) finds every source
document in the table once, with its current values, and no row of a deleted one. Recovery
times are recorded in the summary table (docs/reliability.md), never asserted.
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import time

import pytest
from pymongo import MongoClient
from temporalio.api.enums.v1 import PendingActivityState

from activities.contracts import APPLY_BATCH, CAPTURE_CHANGES
from tests.faults.conftest import RECOVERY_TIMEOUT_S, Rig, run_fault
from tests.faults.rig import lake_table
from tests.test_apply_exactly_once import _publish
from tests.test_slice import _eventually
from tests.test_workers import end_pipeline, running_apply

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

#: replSetStepDown's stepDownSecs: how long the single node stays secondary.
STEP_DOWN_S = 10


def _owner(rig: Rig, identity: str):
    [worker] = [w for w in rig.workers if identity.startswith(w.identity_prefix)]
    return worker


async def _running_capture_identity(rig: Rig) -> str:
    """The worker identity running the capture activity now (polls until one runs)."""
    assert rig.main is not None
    deadline = time.monotonic() + 120
    while True:
        description = await rig.main.handle.describe()
        for pending in description.raw_description.pending_activities:
            if (
                pending.activity_type.name == CAPTURE_CHANGES
                and pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
                and pending.last_worker_identity
            ):
                return pending.last_worker_identity
        assert time.monotonic() < deadline, "no capture activity running"
        await asyncio.sleep(0.25)


async def test_worker_killed_mid_batch(rig: Rig) -> None:
    assert rig.main is not None
    handle = rig.main.handle

    async def inject() -> str:
        # Kill a worker that runs an apply batch but not the capture activity, so this measures
        # the batch's hand-over (capture's own kill is the next scenario).
        capture = await _running_capture_identity(rig)
        deadline = time.monotonic() + 120
        while True:
            for worker in list(rig.workers):
                if (
                    worker.process.poll() is None
                    and not capture.startswith(worker.identity_prefix)
                    and await running_apply(handle, worker.identity_prefix)
                ):
                    worker.process.kill()  # SIGKILL
                    worker.process.wait()
                    return f"pid {worker.process.pid} killed during an apply batch"
            assert time.monotonic() < deadline, "no apply batch caught running"
            await asyncio.sleep(0.1)

    outcome = await run_fault(rig, "worker kill -9 mid-batch", inject)
    rig.workers[:] = [w for w in rig.workers if w.process.poll() is None]
    rig.start_worker()  # two workers again for the next scenarios
    assert outcome.recovered and outcome.lost == 0 and outcome.doubled == 0, outcome


async def test_capture_process_killed(rig: Rig) -> None:
    victims = []

    async def inject() -> str:
        victim = _owner(rig, await _running_capture_identity(rig))
        victim.process.kill()
        victim.process.wait()
        victims.append(victim)
        return "the capture activity's worker killed; capture retried after its heartbeat timeout"

    outcome = await run_fault(rig, "capture process kill -9", inject)
    # Capture runs again, on the surviving worker.
    assert not (await _running_capture_identity(rig)).startswith(victims[0].identity_prefix)
    rig.workers[:] = [w for w in rig.workers if w.process.poll() is None]
    rig.start_worker()
    assert outcome.recovered and outcome.lost == 0 and outcome.doubled == 0, outcome


async def test_poison_event_is_dead_lettered_and_nothing_else_lost(rig: Rig) -> None:
    pipeline = rig.main
    assert pipeline is not None
    poison = f"{{not json {os.urandom(4).hex()}".encode()
    status = await rig.api_answers(pipeline.name)
    topic = status["progress"][f"{pipeline.database}.orders"]["topic"]
    dead_letters = pipeline.table_uri.rsplit("/", 2)[0] + "/_lakeward/dead_letters"

    def dead_lettered() -> list[dict]:
        rows = lake_table(dead_letters, pipeline.storage_options)
        return [] if rows is None else [r for r in rows.to_pylist() if r["value"] == poison]

    async def inject() -> str:
        # Straight into the collection's topic, outside capture's transactions.
        await asyncio.to_thread(_publish, rig.stack.kafka_bootstrap, topic, [(b"junk", poison)])
        [row] = await _eventually(dead_lettered, timeout=RECOVERY_TIMEOUT_S)
        assert row["reason"] == "not_json", row
        assert row["kafka_topic"] == topic, row
        return f"dead-lettered: reason {row['reason']}, original bytes kept"

    outcome = await run_fault(rig, "poison event in the topic", inject)
    assert outcome.recovered and outcome.lost == 0 and outcome.doubled == 0, outcome
    assert len(dead_lettered()) == 1, "the poison record is dead-lettered once"
    body = await rig.api_answers(pipeline.name)
    assert body["progress"][f"{pipeline.database}.orders"]["dead_letters"] >= 1, body


async def _restart(rig: Rig, server: str, down_s: float = 0.0) -> str:
    """Stop one server of this test stack (SIGTERM, SIGKILL after 30 s), keep it down for
    down_s, start it again; returns how long it took to come back."""
    await asyncio.to_thread(rig.stop_server, server)
    if down_s:
        await asyncio.sleep(down_s)  # the outage itself: its length is the fault, not a wait
    started = time.monotonic()
    await asyncio.to_thread(rig.start_server, server)
    return f"{server} ready again {time.monotonic() - started:.1f} s after its start"


async def test_kafka_broker_restart(rig: Rig) -> None:
    outcome = await run_fault(rig, "Kafka broker restart", lambda: _restart(rig, "kafka"))
    assert outcome.recovered and outcome.lost == 0 and outcome.doubled == 0, outcome


async def test_mongod_restart(rig: Rig) -> None:
    outcome = await run_fault(rig, "mongod restart", lambda: _restart(rig, "mongo"))
    assert outcome.recovered and outcome.lost == 0 and outcome.doubled == 0, outcome


async def test_replica_set_stepdown(rig: Rig) -> None:
    def step_down() -> str:
        with MongoClient(rig.stack.mongo_uri) as mongo:
            mongo.admin.command({"replSetStepDown": STEP_DOWN_S, "force": True})
        started = time.monotonic()
        # The single-node set steps back up once its stepDownSecs are over.
        with MongoClient(rig.stack.mongo_uri, directConnection=True) as node:
            while not node.admin.command("hello").get("isWritablePrimary"):
                assert time.monotonic() - started < 120, "the node did not step back up"
                time.sleep(0.1)
        return f"no primary for {time.monotonic() - started:.1f} s (stepDownSecs {STEP_DOWN_S})"

    outcome = await run_fault(rig, "replica-set stepdown", lambda: asyncio.to_thread(step_down))
    assert outcome.recovered and outcome.lost == 0 and outcome.doubled == 0, outcome


async def test_seaweedfs_stopped_for_30_s(rig: Rig) -> None:
    outcome = await run_fault(
        rig, "SeaweedFS (lake on s3://) down 30 s", lambda: _restart(rig, "s3", down_s=30)
    )
    assert outcome.recovered and outcome.lost == 0 and outcome.doubled == 0, outcome


async def test_temporal_dev_server_restart(rig: Rig) -> None:
    assert rig.main is not None
    run_id = (await rig.main.handle.describe()).run_id
    outcome = await run_fault(rig, "Temporal dev server restart", lambda: _restart(rig, "temporal"))
    # The dev server keeps its sqlite file (--db-filename): the same run goes on.
    assert (await rig.main.handle.describe()).run_id == run_id
    assert outcome.recovered and outcome.lost == 0 and outcome.doubled == 0, outcome


async def test_api_restarted_while_the_pipeline_runs(rig: Rig) -> None:
    pipeline = rig.main
    assert pipeline is not None and rig.api is not None

    async def inject() -> str:
        assert rig.api is not None
        rig.api.kill()
        rig.api.wait()
        # Without the API the pipeline still moves: a change made now reaches the lake.
        alone = await rig.progressing(pipeline, "while-the-api-is-down", timeout=RECOVERY_TIMEOUT_S)
        started = time.monotonic()
        rig.start_api()
        body = await rig.api_answers(pipeline.name)
        assert body["state"] == "STREAMING", body
        return (
            f"applied a change {alone:.1f} s after the kill with no API; "
            f"API answered {time.monotonic() - started:.1f} s after its start"
        )

    outcome = await run_fault(rig, "API kill -9 and restart", inject)
    assert outcome.recovered and outcome.lost == 0 and outcome.doubled == 0, outcome


#: The lake's own small filesystem for the disk-full scenario.
LAKE_FS_SIZE = "16m"


@pytest.fixture
def small_lake_fs(tmp_path):
    """A tmpfs of LAKE_FS_SIZE mounted for the lake (the suite runs as root here)."""
    mount = tmp_path / "small-fs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={LAKE_FS_SIZE}", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.fail(f"the disk-full scenario needs to mount a tmpfs (root): {done.stderr}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(path) -> int:
    """Write zeros until the filesystem says ENOSPC; returns the bytes written."""
    written = 0
    chunk = b"\0" * (256 * 1024)
    with open(path, "wb", buffering=0) as filler:
        try:
            while True:
                written += filler.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return written


async def test_disk_full_on_the_lake_path(rig: Rig, small_lake_fs) -> None:
    pipeline = await rig.create_pipeline("disk", {"uri": str(small_lake_fs / "lake")}, None)
    filler = small_lake_fs / "filler"
    seen: dict[str, object] = {}
    try:

        async def inject() -> str:
            seen["filled"] = await asyncio.to_thread(_fill, filler)

            async def clear_error() -> str | None:
                # The API's status shows the batch Temporal is retrying, and why.
                body = await rig.api_answers(pipeline.name)
                seen["retrying"], seen["last_error"] = body["retrying"], body["last_error"]
                errors = [r["error"] for r in body["retrying"] if r["activity"] == APPLY_BATCH]
                return next((e for e in errors if "No space left on device" in e), None)

            deadline = time.monotonic() + RECOVERY_TIMEOUT_S
            while (error := await clear_error()) is None:
                assert time.monotonic() < deadline, f"no clear disk-full error: {seen}"
                await asyncio.sleep(0.5)
            seen["error"] = error
            assert "\x1b" not in error and "\n" not in error, "one plain line"
            # The table stays readable and consistent while the disk is full.
            rows = await asyncio.to_thread(lake_table, pipeline.table_uri, None)
            assert rows is not None
            ids = rows.column("_id").to_pylist()
            assert len(ids) == len(set(ids)), "no row doubled by a half-written commit"
            filler.unlink()
            return f"error shown: {error[:120]}"

        outcome = await run_fault(rig, "disk full on the lake path", inject, pipeline)
        assert outcome.recovered and outcome.lost == 0 and outcome.doubled == 0, outcome
    finally:
        filler.unlink(missing_ok=True)
        await end_pipeline(pipeline.handle)
