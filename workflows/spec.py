"""The pipeline spec: the contract users write (JSON over the API, YAML through the CLI).

Pure data and validation, no I/O and no Temporal: a leaf module every layer imports, the engine
included (STYLE.md: shared shapes live in leaf modules), so workflows never import the engine.
Unknown fields are rejected so a typo never silently falls back to a default.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from workflows.spec_checks import (
    SECRET_REFERENCE_PREFIXES,
    check_collection_name,
    check_mongodb_uri,
    check_secret_reference,
    check_sink_uri,
    check_storage_option,
    is_secret_reference,
)

__all__ = [
    "SECRET_REFERENCE_PREFIXES",
    "Batching",
    "CaptureStrategy",
    "FullDocument",
    "HistoryLostPolicy",
    "Maintenance",
    "OplogUpdate",
    "PipelineSpec",
    "Reconcile",
    "ReconcileMode",
    "SchemaPolicy",
    "Sink",
    "Snapshot",
    "SnapshotMode",
    "Source",
    "SourceTLS",
]

NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
#: Database names become Kafka topic parts and lake directories (workflows/spec_checks.py).
DATABASE_PATTERN = r"^[A-Za-z0-9_-]{1,63}$"
#: A collection's change-log table is its table's name with this suffix.
CHANGE_LOG_SUFFIX = "__changes"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CaptureStrategy(StrEnum):
    change_stream = "change_stream"
    oplog = "oplog"
    debezium = "debezium"


class FullDocument(StrEnum):
    """What a change stream's update event carries as `after` (MongoDB's `fullDocument`)."""

    update_lookup = "update_lookup"  # the current document when the event is read
    when_available = "when_available"  # the exact post-image if kept, else the current document
    required = "required"  # the exact post-image, else the pipeline fails


class OplogUpdate(StrEnum):
    """How the oplog strategy turns an update entry (a `$v: 2` diff) into a full document."""

    lookup = "lookup"  # read the current document by _id (as update_lookup)
    diff = "diff"  # apply the diff to the stored pre-image: the exact post-image


class HistoryLostPolicy(StrEnum):
    """What happens when the resume point is gone from the oplog."""

    fail = "fail"  # the pipeline fails with HistoryLostError naming the fix
    resnapshot = "resnapshot"  # a re-sync: the stream starts anew, every collection is copied


def _reference_only(value: str | None, example: str) -> str | None:
    """A password field: a well-formed secret reference, never the value itself (the spec
    travels through workflow history, where a password would leak)."""
    if value is None:
        return None
    if not is_secret_reference(value):
        raise ValueError(
            "must be a secret reference (env:VAR, file:/path or vault:<mount>/<path>#<key>), "
            f"not the password itself (it would be stored in workflow history): e.g. {example}"
        )
    return check_secret_reference(value)


class SourceTLS(_Strict):
    """TLS to the source's MongoDB servers. Files are paths on the worker; the key password is
    a secret reference only. Options already in the URI (tls=true&tlsCAFile=...) work too;
    these are added to them, replacing the same option."""

    enabled: bool = Field(True, description="Connect with TLS (false: the URI decides).")
    ca_file: str | None = Field(
        None,
        description="CA (PEM) that signed the servers' certificates; unset: the "
        "worker's trust store.",
    )
    certificate_key_file: str | None = Field(
        None,
        description="Client certificate and private key in one PEM file, for servers "
        "that require client certificates (or x.509 authentication).",
    )
    certificate_key_password: str | None = Field(
        None,
        description="Password of that key, as a secret reference (env:, file:, vault:).",
    )
    allow_invalid_hostnames: bool = Field(
        False,
        description="Accept a server certificate that does not name the host dialled "
        "(weakens TLS: a man in the middle with any certificate of the CA goes unnoticed).",
    )

    @field_validator("certificate_key_password")
    @classmethod
    def _password_is_a_reference(cls, value: str | None) -> str | None:
        return _reference_only(value, "env:MONGO_TLS_KEY_PASSWORD")


class Source(_Strict):
    uri: str = Field(
        description="MongoDB connection string without a password, or a secret reference "
        "(env:VAR, file:/path, vault:<mount>/<path>#<key>) resolved at the moment of use."
    )
    username: str | None = Field(
        None,
        description="MongoDB user, plain or a secret reference, merged into the URI at the "
        "moment of use (with password); the URI must then hold no user.",
    )
    password: str | None = Field(
        None,
        description="MongoDB password: a secret reference only (env:, file:, vault:), e.g. "
        "vault:database/creds/lakeward-capture#password with username from the same path.",
    )
    database: str = Field(
        description="1-63 ASCII letters, digits, '_' or '-' (a Kafka topic part and a lake "
        "directory).",
        json_schema_extra={"pattern": DATABASE_PATTERN},
    )
    collections: list[Annotated[str, Field(min_length=1, max_length=255)]] = Field(
        default_factory=list,
        description="Collections to replicate; empty means every collection of the database.",
    )
    discovery_interval_s: Annotated[float, Field(ge=1, le=86_400)] = Field(
        60,
        description="With no collections listed: how often the pipeline looks for new "
        "collections (each is snapshotted, then streamed).",
    )
    tls: SourceTLS | None = Field(
        None, description="TLS options; unset: the worker's LAKEWARD_MONGO_TLS_* settings."
    )
    capture: CaptureStrategy = CaptureStrategy.change_stream
    full_document: FullDocument = Field(
        FullDocument.update_lookup,
        description="change_stream: `after` of updates. update_lookup reads the current "
        "document (cheap, may be newer than the change); when_available and required use the "
        "exact post-image, which needs changeStreamPreAndPostImages on the collection "
        "(see enable_pre_images); when_available falls back to a lookup, required fails.",
    )
    pre_images: bool = Field(
        False,
        description="Send the document before the change as `before` of updates, replaces "
        "and deletes (fullDocumentBeforeChange: whenAvailable; null when MongoDB kept none). "
        "Needs changeStreamPreAndPostImages on the collection, which costs a write per change.",
    )
    enable_pre_images: bool = Field(
        False,
        description="Run collMod to turn on changeStreamPreAndPostImages for the listed "
        "collections when capture starts (needs the dbAdmin role); off: enable it yourself.",
    )
    oplog_update: OplogUpdate = Field(
        OplogUpdate.lookup,
        description="oplog: `after` of updates. lookup reads the current document by _id; "
        "diff applies the entry's diff to the pre-image MongoDB stored (exact, needs "
        "changeStreamPreAndPostImages; falls back to a lookup when no pre-image exists).",
    )
    on_history_lost: HistoryLostPolicy = Field(
        HistoryLostPolicy.fail,
        description="When the checkpoint is gone from the oplog: fail (HistoryLostError naming "
        "the fix) or resnapshot (re-sync: stream from now and copy every collection again, "
        "removing rows of documents deleted meanwhile). Snapshot modes when_needed and always "
        "re-sync whatever this says.",
    )

    @model_validator(mode="after")
    def _options_fit_the_strategy(self) -> Source:
        if self.capture is CaptureStrategy.debezium and self.full_document is FullDocument.required:
            raise ValueError(
                "full_document 'required' is not available with capture: debezium (its "
                "post-image mode is whenAvailable); use when_available"
            )
        if (
            self.oplog_update is not OplogUpdate.lookup
            and self.capture is not CaptureStrategy.oplog
        ):
            raise ValueError(
                f"oplog_update applies to capture: oplog only (capture is {self.capture.value!r})"
            )
        if (
            self.full_document is not FullDocument.update_lookup
            and self.capture is CaptureStrategy.oplog
        ):
            raise ValueError(
                "full_document applies to change streams; with capture: oplog use "
                "oplog_update: diff for exact post-images"
            )
        return self

    @field_validator("uri")
    @classmethod
    def _uri_has_no_plain_password(cls, uri: str) -> str:
        if is_secret_reference(uri):
            return check_secret_reference(uri)
        return check_mongodb_uri(uri)

    @field_validator("database")
    @classmethod
    def _database_is_a_topic_part(cls, database: str) -> str:
        if not re.fullmatch(DATABASE_PATTERN, database):
            raise ValueError(
                "a database name here is 1-63 ASCII letters, digits, '_' or '-' (it becomes a "
                "Kafka topic part and a lake directory)"
            )
        return database

    @field_validator("password")
    @classmethod
    def _password_is_a_reference(cls, password: str | None) -> str | None:
        return _reference_only(password, "vault:secret/lakeward/worker/mongo#password")

    @model_validator(mode="after")
    def _credentials_in_one_place(self) -> Source:
        if self.password is not None and self.username is None:
            raise ValueError("source.password needs source.username")
        in_uri = not is_secret_reference(self.uri) and urlsplit(self.uri).username
        if self.username is not None and in_uri:
            raise ValueError(
                "source.uri names a user and source.username is set; keep the user in one place"
            )
        return self

    @field_validator("collections")
    @classmethod
    def _collections_are_unique(cls, collections: list[str]) -> list[str]:
        if len(set(collections)) != len(collections):
            raise ValueError("lists a collection twice")
        for collection in collections:
            check_collection_name(collection)
        return collections


class Sink(_Strict):
    uri: str = Field(
        ".lakeward/lake",
        description="Root of the lake: a local path, file://..., or s3://bucket/prefix.",
    )
    change_log: bool = Field(False, description="Also keep an append-only change-log table.")
    change_log_before: bool = Field(
        False,
        description="Change log: also keep the document before the change (needs "
        "source.pre_images for updates and deletes; null where MongoDB kept none).",
    )
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        description="Object-store options for an s3:// lake (endpoint, region, ...), merged over "
        "the worker's settings. Credentials only as secret references (env:, file:, vault:).",
    )

    @field_validator("storage_options")
    @classmethod
    def _credentials_are_references(cls, options: dict[str, str]) -> dict[str, str]:
        for key, value in options.items():
            check_storage_option(key, value)
        return options

    @field_validator("uri")
    @classmethod
    def _uri_is_safe(cls, uri: str) -> str:
        return check_sink_uri(uri).rstrip("/")

    def table_uri(self, database: str, collection: str) -> str:
        """Where a collection's current-state table lives: <lake>/<db>/<collection>."""
        return self._join(database, collection)

    def dead_letters_uri(self) -> str:
        """The dead-letter table: <lake>/_lakeward/dead_letters."""
        return self._join("_lakeward", "dead_letters")

    def change_log_uri(self, database: str, collection: str) -> str:
        """A collection's change-log table: <lake>/<db>/<collection>__changes."""
        return self._join(database, f"{collection}{CHANGE_LOG_SUFFIX}")

    def _join(self, *parts: str) -> str:
        # Pure string work: workflows call this, and they may not touch the file system.
        return "/".join([self.uri, *parts])


class Batching(_Strict):
    """Micro-batches close at max_records or max_wait_ms after their first record.

    With `adaptive`, the record bound moves between min_records and adaptive_max_records from
    observed backlog and commit latency (docs/apply.md): large commits drain a backlog, small
    ones keep a quiet stream fresh. max_records is where it starts.
    """

    max_records: Annotated[int, Field(ge=1, le=100_000)] = 1000
    max_wait_ms: Annotated[int, Field(ge=1, le=60_000)] = 100
    adaptive: bool = True
    min_records: Annotated[int, Field(ge=1, le=100_000)] | None = Field(
        None, description="Adaptive lower bound; default min(100, max_records)."
    )
    adaptive_max_records: Annotated[int, Field(ge=1, le=200_000)] | None = Field(
        None, description="Adaptive upper bound; default max(20000, max_records)."
    )

    @model_validator(mode="after")
    def _bounds_in_order(self) -> Batching:
        if not self.lower_bound <= self.max_records <= self.upper_bound:
            raise ValueError(
                "batching needs min_records <= max_records <= adaptive_max_records (got "
                f"{self.lower_bound}, {self.max_records}, {self.upper_bound})"
            )
        return self

    @property
    def lower_bound(self) -> int:
        return min(100, self.max_records) if self.min_records is None else self.min_records

    @property
    def upper_bound(self) -> int:
        if self.adaptive_max_records is None:
            return max(20_000, self.max_records)
        return self.adaptive_max_records


class SchemaPolicy(StrEnum):
    """What apply does with a value whose type conflicts with its column (docs/apply.md)."""

    permissive = "permissive"  # keep the field as Extended JSON in the sibling column <name>%json
    strict = "strict"  # dead-letter the event
    coerce = "coerce"  # convert where lossless (e.g. "42" into an int column), else dead-letter


class Maintenance(_Strict):
    """Table upkeep the pipeline runs on its own (compaction, checkpoints, vacuum)."""

    interval_minutes: Annotated[float, Field(gt=0, le=10_080)] = Field(
        60, description="How often each table is maintained (counted from its first batch)."
    )
    target_file_mb: Annotated[int, Field(ge=1, le=4096)] = Field(
        128, description="Compaction target file size."
    )
    min_files_to_compact: Annotated[int, Field(ge=2, le=100_000)] = Field(
        16, description="Compact once this many files are smaller than the target."
    )
    vacuum_retention_hours: Annotated[int, Field(ge=1, le=87_600)] = Field(
        168,
        description="Files no longer referenced are deleted after this long (time travel and "
        "readers in flight need them until then).",
    )


class SnapshotMode(StrEnum):
    initial = "initial"  # copy existing documents when the pipeline is created
    never = "never"  # stream only: documents that existed before creation are not copied
    when_needed = "when_needed"  # like initial, and a re-sync when the resume point is lost
    always = "always"  # like when_needed, and a copy on every resume after a pause


class Snapshot(_Strict):
    """The initial load: existing documents copied as `op: r` events while the stream runs."""

    mode: SnapshotMode = SnapshotMode.initial
    parallelism: Annotated[int, Field(ge=1, le=32)] = Field(
        2, description="Ranges copied at once per collection."
    )
    range_docs: Annotated[int, Field(ge=100, le=10_000_000)] = Field(
        50_000, description="Target documents per `_id` range (the unit of resume)."
    )


_CRON_FIELD = r"(\*|[0-9]{1,2}(-[0-9]{1,2})?|[A-Za-z]{3}(-[A-Za-z]{3})?)(/[0-9]{1,2})?"
_CRON = re.compile(rf"{_CRON_FIELD}(,{_CRON_FIELD})*")
_CRON_MACROS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


def _is_cron(expression: str) -> bool:
    """A five-field cron expression or a macro, as Temporal Schedules accept them."""
    if expression in _CRON_MACROS:
        return True
    fields = expression.split()
    return len(fields) == 5 and all(_CRON.fullmatch(f) for f in fields)


class ReconcileMode(StrEnum):
    fast = "fast"  # the lake side may use the hash written at apply time
    deep = "deep"  # the lake side recomputes hashes from the data (catches corrupted values)


class Reconcile(_Strict):
    """Merkle-tree reconciliation, on a schedule (a Temporal Schedule per pipeline) or on demand."""

    schedule: str = Field(
        "",
        description="Cron expression (UTC, five fields or a macro such as @daily) of scheduled "
        "runs; empty: on demand only.",
    )
    mode: ReconcileMode = ReconcileMode.fast
    leaf_size: Annotated[int, Field(ge=16, le=1_000_000)] = Field(
        1000, description="Target documents per leaf (a contiguous _id range)."
    )
    parallelism: Annotated[int, Field(ge=1, le=32)] = Field(
        4, description="Ranges hashed at once per collection."
    )
    repair: bool = Field(
        False, description="Re-emit the source state of the differing keys, then verify again."
    )

    @field_validator("schedule")
    @classmethod
    def _schedule_is_cron(cls, schedule: str) -> str:
        schedule = " ".join(schedule.split())
        if schedule and not _is_cron(schedule):
            raise ValueError(
                f"{schedule!r} is not a cron expression; use five fields "
                "(minute hour day-of-month month day-of-week, e.g. '0 3 * * *') or a macro "
                "such as @daily"
            )
        return schedule


class PipelineSpec(_Strict):
    name: str = Field(
        description="[a-z0-9-]{1,63}, unique.", json_schema_extra={"pattern": NAME_PATTERN}
    )
    source: Source
    sink: Sink = Field(default_factory=Sink)
    batching: Batching = Field(default_factory=Batching)
    snapshot: Snapshot = Field(default_factory=Snapshot)
    schema_policy: SchemaPolicy = SchemaPolicy.permissive
    maintenance: Maintenance = Field(default_factory=Maintenance)
    reconcile: Reconcile = Field(default_factory=Reconcile)

    @field_validator("name")
    @classmethod
    def _name_is_valid(cls, name: str) -> str:
        if not is_valid_name(name):
            raise ValueError(
                "a pipeline name is 1-63 lowercase letters, digits and '-', starting and ending "
                "with a letter or digit (it is part of the workflow id pipeline:<name>)"
            )
        return name

    @model_validator(mode="after")
    def _change_logs_do_not_shadow_collections(self) -> PipelineSpec:
        if self.sink.change_log:
            names = set(self.source.collections)
            clash = sorted(c for c in names if f"{c}{CHANGE_LOG_SUFFIX}" in names)
            if clash:
                raise ValueError(
                    f"with sink.change_log, the change log of {clash[0]!r} would be the table of "
                    f"the collection {clash[0] + CHANGE_LOG_SUFFIX!r}; replicate them in two "
                    "pipelines with different sinks"
                )
        return self

    def with_absolute_sink(self, base: Path) -> PipelineSpec:
        """A copy whose local sink path is absolute (relative paths are taken from `base`).

        The API calls this before starting the workflow, so workers in any directory agree.
        """
        if urlsplit(self.sink.uri).scheme:
            return self
        absolute = str((base / self.sink.uri).resolve())
        return self.model_copy(update={"sink": self.sink.model_copy(update={"uri": absolute})})

    @property
    def workflow_id(self) -> str:
        return f"pipeline:{self.name}"

    def tables(self) -> dict[str, str]:
        """``"<database>.<collection>"`` -> Delta table URI, for every listed collection (none
        for a whole-database spec: the pipeline finds its collections when it starts)."""
        db = self.source.database
        return {f"{db}.{c}": self.sink.table_uri(db, c) for c in self.source.collections}

    def topic(self, prefix: str, collection: str) -> str:
        return f"{prefix}.{self.source.database}.{collection}"


def is_valid_name(name: str) -> bool:
    return re.fullmatch(NAME_PATTERN, name) is not None
