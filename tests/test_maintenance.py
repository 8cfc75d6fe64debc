"""Table maintenance on real Delta tables on local disk: compaction, checkpoints, vacuum, races."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

import lakeward.delta.maintenance as maintenance
from activities.contracts import MaintainTableInput
from activities.maintenance import MaintenanceActivities
from lakeward.delta.maintenance import (
    RETENTION_PROPERTY,
    MaintenanceConflictError,
    MissingTableError,
    NestedTableError,
    checkpoint,
    compact,
    maintain,
    vacuum,
)
from lakeward.settings import Settings
from workflows.spec import Maintenance, PipelineSpec, Sink, Source

SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), pa.field("v", pa.string())])
APP = "p/lakeward.db.c/0"
TARGET = 128 * 1024 * 1024


def _append(uri: str, ids: list[int], version: int, app: str = APP) -> None:
    """One apply-like commit: a small file plus the txn version of its partition."""
    rows = pa.table({"id": ids, "v": [f"v{i}" for i in ids]}, schema=SCHEMA)
    write_deltalake(uri, rows, mode="append", commit_properties=_txn(app, version))


def _upsert(table: DeltaTable, ids: list[int], value: str, version: int) -> None:
    """An apply-like MERGE by id with its txn version (rewrites the files holding those ids)."""
    rows = pa.table({"id": ids, "v": [value] * len(ids)}, schema=SCHEMA)
    merge = table.merge(rows, predicate="t.id = s.id", source_alias="s", target_alias="t",
                        commit_properties=_txn(APP, version))  # fmt: skip
    merge.when_matched_update_all().when_not_matched_insert_all().execute()


def _txn(app: str, version: int) -> CommitProperties:
    return CommitProperties(app_transactions=[Transaction(app, version)])


def _small_files_table(uri: str, commits: int) -> None:
    for i in range(commits):
        _append(uri, [i], version=i)


def _rows(uri: str, version: int | None = None) -> list[tuple[int, str]]:
    table = DeltaTable(uri, version=version).to_pyarrow_table()
    return sorted(zip(table.column("id").to_pylist(), table.column("v").to_pylist(), strict=True))


def _data_files_on_disk(uri: str) -> set[str]:
    return {f for f in os.listdir(uri) if f.endswith(".parquet")}


def _referenced_files(uri: str) -> set[str]:
    return set(pa.table(DeltaTable(uri).get_add_actions()).column("path").to_pylist())


def _age(path: Path, hours: float) -> None:
    then = time.time() - hours * 3600
    os.utime(path, (then, then))


# --- compaction ---------------------------------------------------------------------------------


def test_many_small_commits_compact_into_one_file_with_the_same_rows(tmp_path) -> None:
    uri = str(tmp_path / "t")
    _small_files_table(uri, 30)
    before = _rows(uri)
    old_version = 9  # ten rows

    result = compact(uri, {}, TARGET, min_files_to_compact=16)

    assert result.ran and result.small_files == 30
    assert (result.files_before, result.files_after) == (30, 1)
    assert (result.files_removed, result.files_added) == (30, 1)
    assert result.bytes_removed > result.bytes_added > 0
    assert result.version == DeltaTable(uri).version() == 30
    assert len(_referenced_files(uri)) == 1
    assert _rows(uri) == before
    # The replaced files are still on disk: time travel to before the compaction works.
    assert _rows(uri, version=old_version) == before[:10]
    # Compacting again finds nothing to do and commits nothing.
    again = compact(uri, {}, TARGET, min_files_to_compact=1)
    assert again.files_removed == 0 and again.version is None
    assert DeltaTable(uri).version() == 30


def test_fewer_small_files_than_the_threshold_are_left_alone(tmp_path) -> None:
    uri = str(tmp_path / "t")
    _small_files_table(uri, 15)

    result = compact(uri, {}, TARGET, min_files_to_compact=16)

    assert not result.ran and result.version is None
    assert (result.files_before, result.small_files, result.files_after) == (15, 15, 15)
    assert DeltaTable(uri).version() == 14
    # Files at or above the target are not small: none count, however many there are.
    assert compact(uri, {}, target_bytes=1, min_files_to_compact=2).small_files == 0


def test_compaction_leaves_the_applied_offsets_where_they_were(tmp_path) -> None:
    uri = str(tmp_path / "t")
    for i in range(20):  # two partitions' apply commits, interleaved
        _append(uri, [i], version=100 + i, app=f"p/topic/{i % 2}")
    table = DeltaTable(uri)
    versions = {app: table.transaction_version(app) for app in ("p/topic/0", "p/topic/1")}
    assert versions == {"p/topic/0": 118, "p/topic/1": 119}

    assert compact(uri, {}, TARGET, min_files_to_compact=2).ran
    checkpoint(uri, {})  # a fresh handle now starts from the checkpoint, not the JSON commits

    after = DeltaTable(uri)
    assert {app: after.transaction_version(app) for app in versions} == versions
    # The compaction is the newest commit (version 20) and the checkpoint is read from.
    assert after.history(1)[0]["operation"] == "OPTIMIZE" and after.version() == 20
    assert (tmp_path / "t" / "_delta_log" / "00000000000000000020.checkpoint.parquet").exists()


def test_a_missing_table_is_reported_not_created(tmp_path) -> None:
    uri = str(tmp_path / "nothing")
    with pytest.raises(MissingTableError):
        compact(uri, {}, TARGET, min_files_to_compact=2)
    assert maintain(uri, {}, Maintenance()).skipped
    assert not (tmp_path / "nothing" / "_delta_log").exists()


# --- checkpoints --------------------------------------------------------------------------------


def test_checkpoint_file_appears_in_the_log_and_the_table_reads_from_it(tmp_path) -> None:
    uri = str(tmp_path / "t")
    _small_files_table(uri, 5)
    log = tmp_path / "t" / "_delta_log"
    assert not list(log.glob("*.checkpoint.parquet"))

    assert checkpoint(uri, {}).version == 4

    assert (log / "00000000000000000004.checkpoint.parquet").exists()
    assert '"version":4' in (log / "_last_checkpoint").read_text().replace(" ", "")
    assert _rows(uri) == [(i, f"v{i}") for i in range(5)]


def test_delta_rs_writes_a_checkpoint_every_100_commits_by_itself(tmp_path) -> None:
    """docs/maintenance.md relies on this default (delta.checkpointInterval = 100)."""
    uri = str(tmp_path / "t")
    _small_files_table(uri, 100)
    checkpoints = sorted(p.name for p in (tmp_path / "t" / "_delta_log").glob("*.checkpoint*"))
    assert checkpoints == ["00000000000000000099.checkpoint.parquet"]


# --- vacuum -------------------------------------------------------------------------------------


def test_vacuum_keeps_replaced_files_inside_the_retention_window(tmp_path) -> None:
    uri = str(tmp_path / "t")
    _small_files_table(uri, 20)
    before = _rows(uri)
    compact(uri, {}, TARGET, min_files_to_compact=2)
    on_disk = _data_files_on_disk(uri)
    assert len(on_disk) == 21

    result = vacuum(uri, {}, retention_hours=1)

    assert result.files_deleted == 0 and result.retention_updated
    assert DeltaTable(uri).metadata().configuration[RETENTION_PROPERTY] == "interval 1 hours"
    assert _data_files_on_disk(uri) == on_disk
    assert _rows(uri, version=19) == before  # a reader of the old version still finds its files
    # Set once: the next run finds the property right and commits nothing for it.
    assert not vacuum(uri, {}, retention_hours=1).retention_updated


def test_vacuum_with_zero_retention_deletes_every_replaced_file(tmp_path) -> None:
    """0 hours (tests only; the spec's minimum is 1): the table's own retention is set to 0 too,
    so delta-rs's check passes without enforce_retention_duration=False."""
    uri = str(tmp_path / "t")
    _small_files_table(uri, 20)
    before = _rows(uri)
    compact(uri, {}, TARGET, min_files_to_compact=2)

    result = vacuum(uri, {}, retention_hours=0)

    assert result.files_deleted == 20
    assert _data_files_on_disk(uri) == _referenced_files(uri)
    assert _rows(uri) == before
    with pytest.raises(OSError):  # time travel past the retention window: the files are gone
        _rows(uri, version=19)


def test_vacuum_deletes_a_losing_writers_files_once_older_than_the_retention(tmp_path) -> None:
    uri = str(tmp_path / "t")
    _small_files_table(uri, 10)
    replaced = _referenced_files(uri)
    stale = DeltaTable(uri)  # a MERGE that read the table before the compaction committed
    compact(uri, {}, TARGET, min_files_to_compact=2)
    with pytest.raises(CommitFailedError):
        _upsert(stale, [1], "lost", version=99)
    orphans = _data_files_on_disk(uri) - _referenced_files(uri) - replaced
    assert len(orphans) == 1  # the losing MERGE's output: no commit mentions it

    assert vacuum(uri, {}, retention_hours=1).files_deleted == 0  # written just now: kept

    # Every file now looks two hours old, but the ten the compaction replaced were removed from
    # the table only seconds ago: a reader of version 9 may still need them.
    for name in _data_files_on_disk(uri):
        _age(tmp_path / "t" / name, hours=2)
    assert vacuum(uri, {}, retention_hours=1).files_deleted == 1
    assert not orphans & _data_files_on_disk(uri)
    assert len(_data_files_on_disk(uri)) == 11
    assert _rows(uri, version=9) == _rows(uri)


def test_vacuum_refuses_to_delete_a_table_nested_inside_another(tmp_path) -> None:
    outer, inner = tmp_path / "c", tmp_path / "c" / "sub"
    _small_files_table(str(outer), 2)
    _small_files_table(str(inner), 2)
    for path in inner.rglob("*"):
        _age(path, hours=2)

    with pytest.raises(NestedTableError, match="sub/_delta_log"):
        vacuum(str(outer), {}, retention_hours=1)

    assert _rows(str(inner)) == [(0, "v0"), (1, "v1")]


# --- races with apply ---------------------------------------------------------------------------


def test_compaction_loses_cleanly_to_a_merge_that_commits_while_it_runs(tmp_path, monkeypatch):
    uri = str(tmp_path / "t")
    _small_files_table(uri, 10)
    count_files = maintenance._file_sizes
    commits_while_compacting = []

    def merge_lands_meanwhile(table: DeltaTable) -> list[int]:
        sizes = count_files(table)
        if not commits_while_compacting:  # once: after compaction read the table
            _upsert(DeltaTable(uri), [3, 100], "merged", version=10)
            commits_while_compacting.append(True)
        return sizes

    monkeypatch.setattr(maintenance, "_file_sizes", merge_lands_meanwhile)

    with pytest.raises(MaintenanceConflictError, match="concurrent commit"):
        maintain(uri, {}, Maintenance(min_files_to_compact=2))

    expected = sorted(
        [(i, f"v{i}") for i in range(10) if i != 3] + [(3, "merged"), (100, "merged")]
    )
    assert _rows(uri) == expected
    table = DeltaTable(uri)
    assert table.transaction_version(APP) == 10
    assert table.history(1)[0]["operation"] == "MERGE"  # nothing of the compaction committed


def test_a_merge_that_read_before_compaction_loses_and_its_retry_applies_once(tmp_path) -> None:
    uri = str(tmp_path / "t")
    _small_files_table(uri, 10)
    stale = DeltaTable(uri)
    compact(uri, {}, TARGET, min_files_to_compact=2)

    # TxnTable turns this into ConcurrentCommitError; apply retries from the txn versions.
    with pytest.raises(CommitFailedError, match="concurrent"):
        _upsert(stale, [3], "merged", version=10)
    assert DeltaTable(uri).transaction_version(APP) == 9

    _upsert(DeltaTable(uri), [3], "merged", version=10)
    assert _rows(uri) == sorted([(i, f"v{i}") for i in range(10) if i != 3] + [(3, "merged")])


def test_compaction_racing_merges_from_two_threads_loses_and_doubles_no_row(tmp_path) -> None:
    uri = str(tmp_path / "t")
    _append(uri, [0], version=0)
    expected = {0: "v0"}
    losers: list[BaseException] = []
    for round_ in range(1, 13):
        new_ids = [round_ * 100 + i for i in range(6)]
        for i in new_ids:
            _append(uri, [i], version=round_ * 100 + i)
        expected |= {i: f"v{i}" for i in new_ids}

        _race_compaction_and_merge(uri, [0, round_ * 100], f"r{round_}", 10_000 + round_, losers)

        expected |= {0: f"r{round_}", round_ * 100: f"r{round_}"}
        assert _rows(uri) == sorted(expected.items())
        assert DeltaTable(uri).transaction_version(APP) == 10_000 + round_
    assert all("concurrent" in str(loser) for loser in losers)


def _race_compaction_and_merge(
    uri: str, ids: list[int], value: str, version: int, losers: list[BaseException]
) -> None:
    """Start a compaction and an apply MERGE at once; the MERGE retries until it commits."""
    start = threading.Barrier(2)

    def compaction() -> None:
        start.wait()
        try:
            compact(uri, {}, TARGET, min_files_to_compact=2)
        except MaintenanceConflictError as exc:
            losers.append(exc)

    def apply() -> None:
        start.wait()
        for _ in range(20):  # as apply does: a lost commit is retried from a fresh read
            try:
                _upsert(DeltaTable(uri), ids, value, version)
                return
            except CommitFailedError as exc:
                losers.append(exc)

    threads = [threading.Thread(target=compaction), threading.Thread(target=apply)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# --- the activity -------------------------------------------------------------------------------


def _spec(tmp_path: Path, **maintenance_settings: int) -> PipelineSpec:
    return PipelineSpec(
        name="m",
        source=Source(uri="mongodb://localhost", database="db", collections=["c"]),
        sink=Sink(uri=str(tmp_path / "lake")),
        maintenance=Maintenance(**maintenance_settings),
    )


def test_activity_skips_a_table_that_does_not_exist_yet(tmp_path) -> None:
    spec = _spec(tmp_path)
    activities = MaintenanceActivities(Settings())

    # Called directly, not through Temporal: nothing to heartbeat for a table that is not there.
    result = activities.maintain_table(MaintainTableInput(spec, "c"))

    assert result.skipped and not result.compacted
    assert result.table_uri == spec.tables()["db.c"]
    assert not (tmp_path / "lake").exists()


def test_activity_maintains_the_dead_letter_table_and_heartbeats_each_step(tmp_path) -> None:
    spec = _spec(tmp_path, min_files_to_compact=4, vacuum_retention_hours=24)
    uri = spec.sink.dead_letters_uri()
    _small_files_table(uri, 6)
    env = ActivityEnvironment()
    beats: list[dict[str, str]] = []
    env.on_heartbeat = lambda *details: beats.append(details[0])

    result = env.run(
        MaintenanceActivities(Settings()).maintain_table,
        MaintainTableInput(spec, collection="", dead_letters=True),
    )

    assert result.table_uri == uri and not result.skipped
    assert result.compacted and (result.files_before, result.files_after) == (6, 1)
    assert result.compaction_version == 6 and result.checkpoint_version == 6
    assert result.files_vacuumed == 0 and result.retention_updated
    assert [beat["step"] for beat in beats] == ["compact", "checkpoint", "vacuum"]
    assert _rows(uri) == [(i, f"v{i}") for i in range(6)]


def test_activity_refuses_a_collection_the_pipeline_does_not_replicate(tmp_path) -> None:
    with pytest.raises(ApplicationError) as refused:
        ActivityEnvironment().run(
            MaintenanceActivities(Settings()).maintain_table,
            MaintainTableInput(_spec(tmp_path), "other"),
        )
    assert refused.value.type == "UnknownCollection" and refused.value.non_retryable
