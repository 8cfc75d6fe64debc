"""The Debezium MongoDB connector config Lakeward derives from a pipeline spec (pure, no I/O).

The derived connector writes exactly where Lakeward's own capture writes
(`<prefix>.<db>.<collection>`), in an envelope Lakeward's decoder reads with the same `seq`, so
apply needs no change. docs/debezium.md explains each key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from lakeward.debezium.errors import ConnectorConfigError
from workflows.spec import FullDocument, PipelineSpec, SnapshotMode

__all__ = [
    "CLUSTER_TIME_STAGE",
    "DEBEZIUM_MONGODB_CONNECTOR",
    "MANAGED_KEYS",
    "DebeziumOptions",
    "collection_include_list",
    "connector_config",
    "connector_name",
]

DEBEZIUM_MONGODB_CONNECTOR = "io.debezium.connector.mongodb.MongoDbConnector"
_JSON_CONVERTER = "org.apache.kafka.connect.json.JsonConverter"

#: A change-stream stage the connector appends to its own (`cursor.pipeline`). Debezium 3.x sets
#: `source.ts_ms` from the event's `wallTime` (the wall clock, whose second may differ from the
#: cluster time's) and `source.ord` from the cluster time's increment, so (ts_ms // 1000, ord)
#: would not order changes. Rewriting `wallTime` as cluster time seconds plus the wall clock's
#: milliseconds makes `ts_ms // 1000` the cluster time's seconds, so the decoder derives exactly
#: the `seq` Lakeward's own capture writes, and `ts_ms` stays within a second of the wall clock.
CLUSTER_TIME_STAGE: list[dict[str, object]] = [
    {
        "$set": {
            "wallTime": {
                "$add": [
                    {"$toDate": "$clusterTime"},
                    {"$ifNull": [{"$mod": [{"$toLong": "$wallTime"}, 1000]}, 0]},
                ]
            }
        }
    }
]

#: Lakeward's snapshot modes -> Debezium's, for a pipeline that lets the connector snapshot.
_SNAPSHOT_MODES = {
    SnapshotMode.initial: "initial",
    SnapshotMode.never: "no_data",
    SnapshotMode.when_needed: "when_needed",
    SnapshotMode.always: "always",
}

#: What `DebeziumOptions.extra` may not override: the keys apply and the decoder depend on.
MANAGED_KEYS = frozenset(
    {
        "name",
        "connector.class",
        "tasks.max",
        "mongodb.connection.string",
        "topic.prefix",
        "topic.naming.strategy",
        "filters.match.mode",
        "collection.include.list",
        "collection.exclude.list",
        "database.include.list",
        "database.exclude.list",
        "capture.mode",
        "capture.mode.full.update.type",
        "capture.start.op.time",
        "cursor.pipeline",
        "cursor.pipeline.order",
        "snapshot.mode",
        "provide.transaction.metadata",
        "exactly.once.support",
        "transaction.boundary",
        "key.converter",
        "key.converter.schemas.enable",
        "value.converter",
        "value.converter.schemas.enable",
        "transforms",
        "field.exclude.list",
        "field.renames",
    }
)

_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


@dataclass(frozen=True)
class DebeziumOptions:
    """Connector settings that are not in the pipeline spec.

    `snapshot_mode` None (the default) means Lakeward's snapshot stage copies existing documents
    and the connector only streams (`no_data`); a mode lets the connector snapshot instead.
    `extra` adds tuning keys (e.g. ``producer.override.compression.type``) but may not touch
    MANAGED_KEYS.
    """

    snapshot_mode: SnapshotMode | None = None
    heartbeat_interval_ms: int = 5000
    topic_replication_factor: int = -1  # -1: the broker's default, for topics Connect creates
    extra: Mapping[str, str] = field(default_factory=dict)


def connector_name(spec: PipelineSpec) -> str:
    """The connector's name in Kafka Connect: one connector per pipeline."""
    return f"lakeward-{spec.name}"


def collection_include_list(database: str, collections: list[str]) -> str:
    """`collection.include.list`: one anchored, case-sensitive regex per collection.

    Debezium matches these as regular expressions, case-insensitively and, on the server, not
    anchored: a bare ``shop.orders`` also captures ``shop.ORDERS`` (seen with 3.6.1), and an
    unescaped dot matches any character. ``^(?-i)shop\\.orders$`` matches only that namespace
    in both MongoDB's regex engine (the change stream's $match) and Java's.
    """
    return ",".join(f"^(?-i){re.escape(database)}\\.{re.escape(c)}$" for c in collections)


def connector_config(
    spec: PipelineSpec,
    mongo_uri: str,
    topic_prefix: str,
    *,
    start_at: float | None = None,
    options: DebeziumOptions | None = None,
) -> dict[str, str]:
    """The connector config for a pipeline. It holds the resolved `mongo_uri`: never log it.

    `start_at` (epoch seconds, the pipeline's creation) is where a connector without offsets
    starts streaming, as Lakeward's own capture does. Raises ConnectorConfigError for what
    Debezium cannot do as the spec asks.
    """
    options = options or DebeziumOptions()
    source = spec.source
    problems = [
        f"topic {t!r} is not a valid Kafka topic name ([A-Za-z0-9._-], at most 249 characters); "
        "Debezium would rename it and apply would not find it"
        for t in (spec.topic(topic_prefix, c) for c in source.collections)
        if not _TOPIC.match(t)
    ]
    if source.full_document is FullDocument.required:
        problems.append(
            "source.full_document 'required' has no Debezium equivalent (its post_image mode "
            "falls back silently); use when_available or update_lookup"
        )
    overridden = sorted(set(options.extra) & MANAGED_KEYS)
    if overridden:
        problems.append(f"extra options may not set {', '.join(overridden)}: Lakeward sets them")
    if problems:
        raise ConnectorConfigError(
            f"pipeline {spec.name!r} cannot run with capture: debezium: " + "; ".join(problems),
            messages=problems,
        )

    batching = spec.batching
    config = {
        "connector.class": DEBEZIUM_MONGODB_CONNECTOR,
        # One task: a replica set's change stream is one ordered stream.
        "tasks.max": "1",
        "mongodb.connection.string": mongo_uri,
        "topic.prefix": topic_prefix,
        "collection.include.list": collection_include_list(source.database, source.collections),
        "capture.mode": "change_streams_update_full_with_pre_image"
        if source.pre_images
        else "change_streams_update_full",
        "capture.mode.full.update.type": "lookup"
        if source.full_document is FullDocument.update_lookup
        else "post_image",
        "snapshot.mode": "no_data"
        if options.snapshot_mode is None
        else _SNAPSHOT_MODES[options.snapshot_mode],
        "cursor.pipeline": json.dumps(CLUSTER_TIME_STAGE, separators=(",", ":")),
        "cursor.pipeline.order": "internal_first",
        # The `transaction` block's total_order is the position within a MongoDB transaction.
        "provide.transaction.metadata": "true",
        # Lakeward's topics are not compacted: a tombstone after each delete would serve nothing.
        "tombstones.on.delete": "false",
        "heartbeat.interval.ms": str(options.heartbeat_interval_ms),
        "max.batch.size": str(batching.max_records),
        "max.queue.size": str(max(8192, 2 * batching.max_records)),
        "poll.interval.ms": str(batching.max_wait_ms),
        # Records and source offsets commit in one Kafka transaction per poll batch; validation
        # refuses the connector when the worker does not run exactly-once source support.
        "exactly.once.support": "required",
        "transaction.boundary": "poll",
        "key.converter": _JSON_CONVERTER,
        "key.converter.schemas.enable": "false",
        "value.converter": _JSON_CONVERTER,
        "value.converter.schemas.enable": "false",
        # Data topics are created by Lakeward beforehand; these cover the heartbeat and
        # transaction-metadata topics Connect creates.
        "topic.creation.default.replication.factor": str(options.topic_replication_factor),
        "topic.creation.default.partitions": "1",
    }
    if start_at is not None:
        # A BSON timestamp as one long: seconds in the high 32 bits.
        config["capture.start.op.time"] = str(int(start_at) << 32)
    config.update(options.extra)
    return config
