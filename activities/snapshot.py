"""Snapshot activities: plan a collection's `_id` ranges, copy one range into Kafka."""

from __future__ import annotations

import asyncio

from temporalio import activity

from activities.contracts import (
    COPY_SNAPSHOT_RANGE,
    PLAN_SNAPSHOT,
    CopySnapshotRangeInput,
    CopySnapshotRangeResult,
    PlanSnapshotInput,
    PlanSnapshotResult,
    SnapshotRange,
)
from activities.credentials import secret_failure
from activities.resilience import guarded
from lakeward import metrics
from lakeward.credentials import source_uri
from lakeward.kafka.security import kafka_connection
from lakeward.resilience import Dependency
from lakeward.secrets import SecretReferenceError
from lakeward.settings import Settings
from lakeward.snapshot import KeyRange, SnapshotCopier

__all__ = ["SnapshotActivities"]


class SnapshotActivities:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.kafka = kafka_connection(settings)

    def _copier(self, input: PlanSnapshotInput | CopySnapshotRangeInput) -> SnapshotCopier:
        try:
            uri = source_uri(input.spec.source, self.settings)
        except SecretReferenceError as exc:
            raise secret_failure(exc) from None
        return SnapshotCopier(
            input.spec, input.collection, uri, self.kafka,
            self.settings.topic_prefix,
        )  # fmt: skip

    @activity.defn(name=PLAN_SNAPSHOT)
    async def plan_snapshot(self, input: PlanSnapshotInput) -> PlanSnapshotResult:
        copier = await asyncio.to_thread(self._copier, input)  # may read Vault: off the loop
        with guarded(Dependency.MONGODB, source=input.spec.source.uri):
            ranges = await copier.plan(input.spec.snapshot.range_docs)
        return PlanSnapshotResult(
            ranges=[SnapshotRange(index=r.index, lower=r.lower, upper=r.upper) for r in ranges]
        )

    @activity.defn(name=COPY_SNAPSHOT_RANGE)
    async def copy_snapshot_range(self, input: CopySnapshotRangeInput) -> CopySnapshotRangeResult:
        key_range = KeyRange(input.range.index, input.range.lower, input.range.upper)
        copier = await asyncio.to_thread(self._copier, input)  # may read Vault: off the loop
        with guarded(Dependency.MONGODB, Dependency.KAFKA, source=input.spec.source.uri):
            copied = await copier.copy(
                key_range, on_batch=lambda documents: activity.heartbeat(documents)
            )
        metrics.record_snapshot_range(
            input.spec.name, input.collection, activity.info().workflow_run_id or "",
            key_range.index, input.ranges, copied.documents,
        )  # fmt: skip
        return CopySnapshotRangeResult(
            documents=copied.documents,
            offsets={str(p): o for p, o in copied.offsets.items()},
            seq=copied.seq,
        )
