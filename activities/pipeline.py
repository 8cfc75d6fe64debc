"""Capture and apply activities for the change-stream pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.contracts import (
    APPLY_BATCH,
    APPLY_DEAD_LETTERS,
    CAPTURE_CHANGES,
    RELEASE_CAPTURE,
    RESET_CAPTURE,
    ApplyBatchInput,
    ApplyBatchResult,
    ApplyDeadLettersInput,
    ApplyDeadLettersResult,
    CaptureChangesInput,
    CaptureChangesResult,
    ReleaseCaptureInput,
    ReleaseCaptureResult,
    ResetCaptureInput,
    ResetCaptureResult,
)
from activities.credentials import reconnecting, secret_failure
from activities.resilience import guarded
from lakeward import metrics
from lakeward.apply import CHANGE_LOG_SCHEMA, BatchApplier, DeadLetterApplier
from lakeward.batching import AdaptiveBatchSize
from lakeward.capture import CaptureProgress, SourceCapture, build_capture, dead_letter_topic
from lakeward.credentials import source_uri
from lakeward.debezium import DebeziumError, delete_connector
from lakeward.delta.errors import TableStorageError
from lakeward.delta.storage import storage_options
from lakeward.delta.table import (
    CURRENT_STATE_SCHEMA,
    DEAD_LETTER_SCHEMA,
    ConcurrentCommitError,
    SchemaRewriteRefused,
    TxnTable,
)
from lakeward.kafka.consumer import PartitionReader
from lakeward.kafka.producer import ProducerFencedError
from lakeward.kafka.security import kafka_connection
from lakeward.mongo.errors import CaptureSourceError, HistoryLostError, SourceLoginRefused
from lakeward.resilience import Dependency
from lakeward.secrets import SecretReferenceError
from lakeward.settings import Settings
from workflows.spec import CaptureStrategy, PipelineSpec

__all__ = ["PipelineActivities"]


DEAD_LETTER_APPLIER = "_dead_letters"

_log = logging.getLogger(__name__)


@contextmanager
def _heartbeating() -> Iterator[None]:
    """Heartbeat from a helper thread while the block runs, so a worker that dies mid-batch is
    noticed within the heartbeat timeout, even during a MERGE that runs for minutes inside
    delta-rs with no Python of ours in between.

    activity.heartbeat() finds its activity through a contextvar of the activity's thread (the
    SDK does not carry contextvars into other threads); the helper runs in a copy of that
    context, and the SDK hands the heartbeat to the worker's event loop thread-safely."""
    info = activity.info()
    timeout = info.heartbeat_timeout.total_seconds() if info.heartbeat_timeout else 20.0
    # Core sends at most one heartbeat per throttle interval; beating more often costs nothing.
    every = min(max(timeout / 4, 0.5), 5.0)
    context = contextvars.copy_context()
    done = threading.Event()

    def beat() -> None:
        while not done.wait(every):
            try:
                context.run(activity.heartbeat)
            except Exception as exc:  # a slow event loop; the next beat tries again
                _log.warning("heartbeat of %s failed: %s", info.activity_id, exc)

    activity.heartbeat()
    helper = threading.Thread(target=beat, name=f"heartbeat-{info.activity_id}", daemon=True)
    helper.start()
    try:
        yield
    finally:
        done.set()
        helper.join()


async def _until_worker_shutdown(run: Coroutine[Any, Any, CaptureProgress]) -> CaptureProgress:
    """Capture never ends on its own: on a worker's graceful shutdown it stops at once (its
    Kafka transaction aborted, nothing lost) and fails retryably, so the workflow restarts it on
    another worker instead of holding this one's shutdown for the whole grace period."""
    task = asyncio.ensure_future(run)
    shutdown = asyncio.ensure_future(activity.wait_for_worker_shutdown())
    try:
        await asyncio.wait({task, shutdown}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Also when this activity is cancelled (pause, stop): capture cleans up either way.
        shutdown.cancel()
        stopped_early = not task.done()
        if stopped_early:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if stopped_early:
        raise ApplicationError(
            "the worker is shutting down; capture moves on", type="WorkerShutdown"
        )
    return task.result()


class PipelineActivities:
    """Activities bound to one worker's settings; appliers (consumer + Delta handle) stay warm."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.kafka = kafka_connection(settings)
        self._appliers: dict[tuple[str, str], tuple[threading.Lock, BatchApplier]] = {}
        self._applier_configs: dict[tuple[str, str], tuple[object, ...]] = {}
        self._batch_sizes: dict[tuple[str, str], AdaptiveBatchSize] = {}
        self._dead_letter_appliers: dict[
            tuple[str, str], tuple[threading.Lock, DeadLetterApplier]
        ] = {}
        self._guard = threading.Lock()

    @activity.defn(name=CAPTURE_CHANGES)
    async def capture_changes(self, input: CaptureChangesInput) -> CaptureChangesResult:
        spec = input.spec

        async def run(mongo_uri: str) -> CaptureProgress:
            capture = build_capture(
                spec,
                mongo_uri,
                self.kafka,
                self.settings.topic_prefix,
                start_at=input.start_at or None,
                connect_url=self.settings.connect_url,
                max_message_bytes=self.settings.kafka_max_message_bytes,
            )
            return await capture.run(heartbeat)

        # Fails at once while MongoDB's or Kafka's breaker is open (docs/resilience.md).
        sources = guarded(Dependency.MONGODB, Dependency.KAFKA, source=spec.source.uri)

        def heartbeat(progress: CaptureProgress) -> None:
            sources.succeeded()  # a batch went through: both answer (a probe is over)
            # Cancellation (pause/stop, worker shutdown) is delivered through heartbeats.
            activity.heartbeat(asdict(progress))

        try:
            with sources:
                # Reconnects from the checkpoint when the credentials rotate (docs/secrets.md).
                progress = await _until_worker_shutdown(
                    metrics.capture_errors_counted(
                        spec.name,
                        reconnecting(
                            lambda: source_uri(spec.source, self.settings),
                            run,
                            self.settings.credentials_check_s,
                            self.settings.credentials_rotation_grace_s,
                            beat=activity.heartbeat,
                        ),
                    )
                )
        except SecretReferenceError as exc:
            raise secret_failure(exc) from None
        except SourceLoginRefused as exc:
            # Retried: credentials from a secret store may be mid-rotation.
            raise ApplicationError(str(exc), type="SourceLoginRefused") from exc
        except HistoryLostError as exc:
            # Its own type, so the workflow can tell it apart (on_history_lost: resnapshot).
            raise ApplicationError(str(exc), type="HistoryLost", non_retryable=True) from exc
        except CaptureSourceError as exc:
            raise ApplicationError(str(exc), type="CaptureSourceError", non_retryable=True) from exc
        except ProducerFencedError as exc:
            # A newer attempt owns the transactional id; this one is a zombie and must end.
            raise ApplicationError(str(exc), type="ProducerFenced", non_retryable=True) from exc
        except DebeziumError as exc:
            raise ApplicationError(
                str(exc), type=type(exc).__name__, non_retryable=not exc.retryable
            ) from exc
        finally:
            metrics.capture_stopped(spec.name)
        return CaptureChangesResult(events=progress.events, batches=progress.batches)

    @activity.defn(name=RELEASE_CAPTURE)
    async def release_capture(self, input: ReleaseCaptureInput) -> ReleaseCaptureResult:
        if input.spec.source.capture is not CaptureStrategy.debezium:
            return ReleaseCaptureResult(released=False)
        try:
            deleted = await delete_connector(self.settings.connect_url, input.spec)
        except DebeziumError as exc:
            raise ApplicationError(
                str(exc), type=type(exc).__name__, non_retryable=not exc.retryable
            ) from exc
        return ReleaseCaptureResult(released=deleted)

    @activity.defn(name=RESET_CAPTURE)
    async def reset_capture(self, input: ResetCaptureInput) -> ResetCaptureResult:
        spec = input.spec
        if spec.source.capture is CaptureStrategy.debezium:
            # Debezium keeps its offsets in Connect; its own snapshot.mode handles a lost
            # resume point.
            raise ApplicationError(
                "capture 'debezium' keeps its position in Kafka Connect; Lakeward cannot reset it",
                type="ResetUnsupported",
                non_retryable=True,
            )
        # The URI is never dialled: a reset only writes to the checkpoint topic.
        capture = build_capture(spec, "mongodb://unused", self.kafka, self.settings.topic_prefix)
        assert isinstance(capture, SourceCapture)
        await capture.reset_checkpoint()
        return ResetCaptureResult(reset=True)

    @activity.defn(name=APPLY_BATCH)
    def apply_batch(self, input: ApplyBatchInput) -> ApplyBatchResult:
        lock, applier = self._applier(input)
        batching = input.spec.batching
        sizes = self._batch_sizes[(input.spec.name, input.collection)]
        # One batch per table at a time in this worker: a retried attempt waits for a zombie one.
        with _heartbeating(), lock:
            began = time.monotonic()
            try:
                # A cancel (stop or pause past its grace, worker shutdown past its grace) takes
                # effect after the batch: never between a Delta commit and the reader's state.
                with (
                    activity.shield_thread_cancel_exception(),
                    metrics.apply_attempt(input.spec.name, input.collection),
                    guarded(Dependency.KAFKA, Dependency.OBJECT_STORE),
                ):
                    outcome = applier.apply_once(
                        sizes.size if batching.adaptive else batching.max_records,
                        batching.max_wait_ms / 1000,
                        input.idle_s,
                        keep_tombstones=input.keep_tombstones,
                        purge_tombstones=input.purge_tombstones,
                        sweep_before_seq=input.sweep_before_seq,
                    )
            except ConcurrentCommitError as exc:
                # Another attempt committed these offsets first; the retry re-reads and skips.
                raise ApplicationError(str(exc), type="ConcurrentCommit") from exc
            except SchemaRewriteRefused as exc:
                raise ApplicationError(
                    str(exc), type="SchemaRewriteRefused", non_retryable=True
                ) from exc
            except TableStorageError as exc:
                # A wrong URI or credentials fail the pipeline; a store that did not answer is
                # retried. `from None`: the driver's own text (which may quote request headers)
                # stays out of workflow history and logs; the message says what is wrong.
                kind = "TableStorageUnavailable" if exc.transient else "TableStorageError"
                raise ApplicationError(
                    str(exc), type=kind, non_retryable=not exc.transient
                ) from None
            elapsed = time.monotonic() - began
            metrics.record_apply(input.spec.name, input.collection, outcome, elapsed)
            if outcome.records:
                sizes.observe(outcome.records, outcome.backlog, elapsed)
        return ApplyBatchResult(
            records=outcome.records,
            applied=outcome.applied,
            dead_letters=outcome.dead_letters,
            skipped_already_applied=outcome.skipped_already_applied,
            delta_version=outcome.table_version,
            offsets={str(p): o for p, o in outcome.offsets.items()},
            max_source_ts_ms=outcome.max_source_ts_ms,
            tombstones_purged=outcome.tombstones_purged,
            rows_swept=outcome.rows_swept,
            schema_changes=outcome.schema_changes,
            dead_letter_reasons=outcome.dead_letter_reasons,
            coerced=outcome.coerced,
            kept_as_json=outcome.kept_as_json,
            backlog=outcome.backlog,
            batch_size=sizes.size if batching.adaptive else batching.max_records,
        )

    @activity.defn(name=APPLY_DEAD_LETTERS)
    def apply_dead_letters(self, input: ApplyDeadLettersInput) -> ApplyDeadLettersResult:
        spec = input.spec
        key = (spec.name, DEAD_LETTER_APPLIER)
        with self._guard:
            if key not in self._dead_letter_appliers:
                topic = dead_letter_topic(self.settings.topic_prefix)
                self._dead_letter_appliers[key] = (
                    threading.Lock(),
                    DeadLetterApplier(
                        spec.name,
                        PartitionReader(self.kafka, topic),
                        TxnTable(
                            spec.sink.dead_letters_uri(), DEAD_LETTER_SCHEMA, self._storage(spec)
                        ),
                    ),
                )
            lock, applier = self._dead_letter_appliers[key]
        with lock:
            try:
                with guarded(Dependency.KAFKA, Dependency.OBJECT_STORE):
                    outcome = applier.apply_once(1000, 0.1, input.idle_s)
            except ConcurrentCommitError as exc:
                raise ApplicationError(str(exc), type="ConcurrentCommit") from exc
            except TableStorageError as exc:  # as in apply_batch
                kind = "TableStorageUnavailable" if exc.transient else "TableStorageError"
                raise ApplicationError(
                    str(exc), type=kind, non_retryable=not exc.transient
                ) from None
        metrics.record_capture_dead_letters(spec.name, outcome.dead_letter_collections)
        return ApplyDeadLettersResult(
            records=outcome.records,
            dead_letters=outcome.dead_letters,
            offsets={str(p): o for p, o in outcome.offsets.items()},
        )

    def _applier(self, input: ApplyBatchInput) -> tuple[threading.Lock, BatchApplier]:
        spec = input.spec
        key = (spec.name, input.collection)
        # A reconfigured pipeline (policy, sink) gets a new applier; the old one is closed.
        config = (spec.schema_policy, spec.sink.model_dump_json())
        with self._guard:
            cached = self._appliers.get(key)
            if cached is not None and self._applier_configs.get(key, config) != config:
                cached[1].reader.close()
                cached = None
            if cached is None:
                cached = (threading.Lock(), self._new_applier(spec, input.collection))
                self._appliers[key] = cached
                self._applier_configs[key] = config
            batching = spec.batching
            bounds = (batching.lower_bound, batching.upper_bound, batching.max_records)
            sizes = self._batch_sizes.get(key)
            if sizes is None or (sizes.lower, sizes.upper, sizes.start) != bounds:
                self._batch_sizes[key] = AdaptiveBatchSize(*bounds)
            return cached

    def _new_applier(self, spec: PipelineSpec, collection: str) -> BatchApplier:
        topic = spec.topic(self.settings.topic_prefix, collection)
        db = spec.source.database
        storage = self._storage(spec)
        change_log = None
        if spec.sink.change_log:
            change_log = TxnTable(
                spec.sink.change_log_uri(db, collection), CHANGE_LOG_SCHEMA, storage
            )
        return BatchApplier(
            spec.name,
            PartitionReader(self.kafka, topic),
            TxnTable(spec.sink.table_uri(db, collection), CURRENT_STATE_SCHEMA, storage),
            TxnTable(spec.sink.dead_letters_uri(), DEAD_LETTER_SCHEMA, storage),
            schema_policy=spec.schema_policy,
            max_record_bytes=self.settings.apply_max_record_bytes,
            change_log=change_log,
            change_log_before=spec.sink.change_log_before,
            collection=collection,
        )

    def _storage(self, spec: PipelineSpec) -> dict[str, str]:
        try:
            return storage_options(spec.sink, self.settings)
        except SecretReferenceError as exc:
            raise secret_failure(exc) from None

    def close(self) -> None:
        for _, applier in self._appliers.values():
            applier.reader.close()
        for _, dead_letters in self._dead_letter_appliers.values():
            dead_letters.reader.close()
