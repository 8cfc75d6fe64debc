"""Reconciliation activities: thin adapters over lakeward.reconcile.engine.

Hashing (`hash_source_range`, `hash_lake_range`, `find_reconcile_candidates`) runs on the CPU
task queue; planning, verifying (which waits for the pipeline), repairing and the report on the
I/O queue. `hash_source_range` heartbeats each finished leaf's hash, so a retry resumes at the
first unfinished leaf of its range.
"""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.contracts import (
    FIND_RECONCILE_CANDIDATES,
    HASH_LAKE_RANGE,
    HASH_SOURCE_RANGE,
    PLAN_RECONCILE,
    REPAIR_RECONCILE_KEYS,
    VERIFY_RECONCILE_KEYS,
    WRITE_RECONCILE_REPORT,
    FindCandidatesInput,
    FindCandidatesResult,
    HashRangeInput,
    HashRangeResult,
    PlanReconcileInput,
    PlanReconcileResult,
    ReconcileKey,
    ReconcileRange,
    RepairKeysInput,
    RepairKeysResult,
    VerifyKeysInput,
    VerifyKeysResult,
    WriteReportInput,
    WriteReportResult,
)
from activities.credentials import secret_failure
from activities.resilience import guarded
from lakeward import metrics
from lakeward.credentials import source_uri
from lakeward.delta.storage import storage_options
from lakeward.kafka.security import kafka_connection
from lakeward.reconcile.compare import CHANGED, EXTRA, MISSING
from lakeward.reconcile.engine import CollectionReconciler
from lakeward.reconcile.hashing import LeafHash
from lakeward.reconcile.report import report_uri, write_report
from lakeward.resilience import Dependency
from lakeward.secrets import SecretReferenceError
from lakeward.settings import Settings
from workflows.contracts import ReconcileDifference, ReconcileFieldDiff
from workflows.spec import PipelineSpec

__all__ = ["ReconcileActivities"]


class ReconcileActivities:
    def __init__(self, settings: Settings, settle_timeout_s: float = 120.0) -> None:
        self.settings = settings
        self.kafka = kafka_connection(settings)
        self.settle_timeout_s = settle_timeout_s

    def _engine(self, spec: PipelineSpec, collection: str) -> CollectionReconciler:
        if collection not in spec.source.collections:
            raise ApplicationError(
                f"pipeline {spec.name!r} does not replicate {collection!r} (it replicates "
                f"{', '.join(spec.source.collections)})",
                type="UnknownCollection",
                non_retryable=True,
            )
        try:
            uri = source_uri(spec.source, self.settings)
            options = storage_options(spec.sink, self.settings)
        except SecretReferenceError as exc:
            raise secret_failure(exc) from None
        return CollectionReconciler(
            spec, collection, uri, self.kafka, self.settings.topic_prefix,
            options, settle_timeout_s=self.settle_timeout_s,
        )  # fmt: skip

    @activity.defn(name=PLAN_RECONCILE)
    async def plan_reconcile(self, input: PlanReconcileInput) -> PlanReconcileResult:
        engine = await asyncio.to_thread(self._engine, input.spec, input.collection)
        plan = await engine.plan(input.spec.reconcile.leaf_size, input.mode)
        uppers: list[str | None] = [*plan.bounds, None]
        per_range = _LEAVES_PER_RANGE
        ranges = []
        for index, start in enumerate(range(0, len(uppers), per_range)):
            lower = None if start == 0 else uppers[start - 1]
            ranges.append(ReconcileRange(index, lower, uppers[start : start + per_range]))
        return PlanReconcileResult(
            table_uri=engine.uri, version=plan.version, mode=plan.mode, ranges=ranges,
            leaves=len(uppers), estimated_documents=plan.estimated_documents,
        )  # fmt: skip

    @activity.defn(name=HASH_SOURCE_RANGE)
    async def hash_source_range(self, input: HashRangeInput) -> HashRangeResult:
        engine = await asyncio.to_thread(self._engine, input.spec, input.collection)
        done = _resumed(activity.info().heartbeat_details)

        def on_leaf(hashes: list[LeafHash]) -> None:
            activity.heartbeat([[h.count, h.hash] for h in hashes])

        with guarded(Dependency.MONGODB, source=input.spec.source.uri):
            hashes = await engine.hash_source(
                input.version, input.range.lower, input.range.uppers, done, on_leaf, input.mode
            )
        return _hashed(hashes)

    @activity.defn(name=HASH_LAKE_RANGE)
    def hash_lake_range(self, input: HashRangeInput) -> HashRangeResult:
        """Sync: DuckDB and Arrow block, so it runs in the CPU pool."""
        engine = self._engine(input.spec, input.collection)
        activity.heartbeat()
        return _hashed(
            engine.hash_lake(input.version, input.range.lower, input.range.uppers, input.mode)
        )

    @activity.defn(name=FIND_RECONCILE_CANDIDATES)
    async def find_reconcile_candidates(self, input: FindCandidatesInput) -> FindCandidatesResult:
        engine = await asyncio.to_thread(self._engine, input.spec, input.collection)
        found = await _heartbeating(
            engine.candidates(
                input.version, [(leaf.lower, leaf.upper) for leaf in input.leaves], input.mode
            )
        )
        return FindCandidatesResult(
            keys=[ReconcileKey(k, t) for k, t in found.keys[: input.limit]],
            documents=found.documents,
            total=len(found.keys),
        )

    @activity.defn(name=VERIFY_RECONCILE_KEYS)
    async def verify_reconcile_keys(self, input: VerifyKeysInput) -> VerifyKeysResult:
        engine = await asyncio.to_thread(self._engine, input.spec, input.collection)
        verified = await _heartbeating(engine.verify([(k.key, k.key_type) for k in input.keys]))
        differences = verified.differences
        return VerifyKeysResult(
            differences=[
                ReconcileDifference(
                    collection=input.collection, key=d.key, key_type=d.key_type, kind=d.kind,
                    fields=[ReconcileFieldDiff(f.path, f.source, f.lake) for f in d.fields],
                )
                for d in differences[: input.limit]
            ],
            missing=sum(d.kind == MISSING for d in differences),
            extra=sum(d.kind == EXTRA for d in differences),
            changed=sum(d.kind not in (MISSING, EXTRA) for d in differences),
            keys=[ReconcileKey(d.key, d.key_type) for d in differences],
            unsettled=len(verified.unsettled),
            settled=verified.settled,
        )  # fmt: skip

    @activity.defn(name=REPAIR_RECONCILE_KEYS)
    async def repair_reconcile_keys(self, input: RepairKeysInput) -> RepairKeysResult:
        engine = await asyncio.to_thread(self._engine, input.spec, input.collection)
        with guarded(Dependency.MONGODB, Dependency.KAFKA, source=input.spec.source.uri):
            published = await engine.repair([(k.key, k.key_type) for k in input.keys])
        return RepairKeysResult(published=published)

    @activity.defn(name=WRITE_RECONCILE_REPORT)
    def write_reconcile_report(self, input: WriteReportInput) -> WriteReportResult:
        spec, report = input.spec, input.report
        try:
            options = storage_options(spec.sink, self.settings)
        except SecretReferenceError as exc:
            raise secret_failure(exc) from None
        uri = report_uri(spec.sink.uri)
        summary = report.summary
        row: dict[str, Any] = {
            "id": summary.id, "pipeline": report.pipeline, "collections": report.collections,
            "mode": report.mode, "trigger": report.trigger, "outcome": summary.outcome,
            "started_at": summary.started_at, "finished_at": summary.finished_at,
            "documents": summary.documents, "ranges": report.ranges, "leaves": report.leaves,
            "mismatching_leaves": report.mismatching_leaves, "missing": summary.missing,
            "extra": summary.extra, "changed": summary.changed, "repaired": summary.repaired,
            "unsettled": report.unsettled, "settled": report.settled, "error": summary.error,
            "differences": [
                {"collection": d.collection, "key": d.key, "key_type": d.key_type,
                 "kind": d.kind,
                 "fields": [{"path": f.path, "source": f.source, "lake": f.lake}
                            for f in d.fields]}
                for d in report.differences
            ],
            "truncated": report.truncated,
        }  # fmt: skip
        version = write_report(uri, options, row)
        # Here, once per run and after the report is safe, not in the workflow: recording is I/O.
        metrics.record_reconcile(
            report.pipeline, summary.outcome, summary.finished_at - summary.started_at,
            summary.documents,
            {MISSING: summary.missing, EXTRA: summary.extra, CHANGED: summary.changed},
        )  # fmt: skip
        return WriteReportResult(table_uri=uri, version=version)


#: Leaves per range: a range is one unit of parallel work and of resumption.
_LEAVES_PER_RANGE = 16


def _resumed(details: Any) -> list[LeafHash]:
    """The finished leaves a previous attempt heartbeated ([[count, hash], ...])."""
    if not details:
        return []
    return [LeafHash(int(count), str(digest)) for count, digest in details[0]]


def _hashed(hashes: list[LeafHash]) -> HashRangeResult:
    return HashRangeResult(
        hashes=[h.hash for h in hashes],
        counts=[h.count for h in hashes],
        documents=sum(h.count for h in hashes),
    )


async def _heartbeating(work: Any) -> Any:
    """Await `work`, heartbeating every few seconds (it may wait for the pipeline)."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=5.0)
        if done:
            return task.result()
        activity.heartbeat()
