"""Schema evolution for one micro-batch: what the table becomes, and what the policy does.

Given a table's document columns and a batch of documents, `plan_batch` decides, before
anything is written (docs/apply.md, "Schema evolution"):

* new fields become new nullable columns, new nested fields new struct fields, a new BSON type
  in a variant column a new member; numeric columns widen (int32 -> int64 -> double);
* a value whose type conflicts with its column follows the pipeline's `schema_policy`:
  ``permissive`` keeps the whole top-level field as canonical Extended JSON in the sibling
  column ``<column>%json`` (lossless; `from_arrow` reads it back in place), ``strict``
  dead-letters the event, ``coerce`` converts the document where nothing is lost
  (`typefactory.coerce`) and dead-letters it otherwise;
* a document the factory cannot store at all (a date beyond Delta's range) is dead-lettered.

Pure: no I/O, so it is tested without a table.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from lakeward.typefactory import (
    NULLS_COLUMN,
    Conflict,
    TypeFactoryError,
    Widening,
    coerce,
    infer_schema,
    json_column,
    merge_schemas,
    normalise,
    to_arrow,
)
from workflows.spec import SchemaPolicy

__all__ = ["BatchPlan", "plan_batch"]


@dataclass
class BatchPlan:
    """The document part of the table after this batch, and each document's fate."""

    #: Document columns (typed, `%json` siblings, `%nulls`) the batch is written with.
    schema: pa.Schema
    #: Input indexes written, in order (deletes included), and their document columns.
    kept: list[int]
    columns: pa.Table
    #: Input index -> (dead-letter reason, error) for the documents the batch cannot write.
    rejected: dict[int, tuple[str, str]] = field(default_factory=dict)
    added: tuple[str, ...] = ()
    widened: tuple[Widening, ...] = ()
    #: The conflicts the policy resolved (or rejected), for the logs and commit metadata.
    conflicts: tuple[Conflict, ...] = ()
    coerced: int = 0
    kept_as_json: int = 0

    @property
    def changed(self) -> bool:
        """The table's schema must change before the batch is written."""
        return bool(self.added or self.widened)

    def summary(self) -> dict[str, Any]:
        """What changed, for the commit metadata and the logs (paths and types, no values)."""
        return {
            "added": list(self.added),
            "widened": [f"{w.path}: {w.existing} -> {w.widened}" for w in self.widened],
            "conflicts": [str(c) for c in self.conflicts],
            "kept_as_json": self.kept_as_json,
            "coerced": self.coerced,
            "rejected": len(self.rejected),
        }


def plan_batch(
    existing: pa.Schema | None,
    docs: Sequence[dict[str, Any] | None],
    policy: SchemaPolicy,
    reserved: Sequence[str] = (),
) -> BatchPlan:
    """Plan how `docs` (None for deletes) are written into a table whose document columns are
    `existing` (None: a new table); `reserved` are the table's own column names.

    The common batch (nothing in conflict) costs one inference, one merge and one conversion;
    documents are looked at one by one only when the batch as a whole does not fit.
    """
    try:
        live = [normalise(d) if d is not None else {} for d in docs]
        if existing is not None:
            # The steady state: every value fits a column the table has (to_arrow refuses a
            # key without a column and a value of a kind its column cannot hold exactly).
            with contextlib.suppress(TypeFactoryError):
                columns = to_arrow(live, existing, normalised=True)
                return BatchPlan(schema=existing, kept=list(range(len(docs))), columns=columns)
        merged = merge_schemas(existing, infer_schema(live, reserved, normalised=True), reserved)
        if not merged.conflicts:
            columns = to_arrow(live, merged.schema, normalised=True)
            return BatchPlan(
                schema=merged.schema,
                kept=list(range(len(docs))),
                columns=columns,
                added=merged.added,
                widened=merged.widened,
            )
    except TypeFactoryError:
        pass
    return _plan_one_by_one(existing, docs, policy, reserved)


def _plan_one_by_one(
    existing: pa.Schema | None,
    docs: Sequence[dict[str, Any] | None],
    policy: SchemaPolicy,
    reserved: Sequence[str],
) -> BatchPlan:
    out: list[dict[str, Any] | None] = [d if d is not None else {} for d in docs]
    as_json: list[frozenset[str]] = [frozenset()] * len(docs)
    rejected: dict[int, tuple[str, str]] = {}
    conflicts: list[Conflict] = []
    coerced = 0
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        try:
            single = merge_schemas(existing, infer_schema([doc], reserved), reserved)
            if not single.conflicts:
                to_arrow([doc], single.schema)  # storable at all (a date beyond Delta's range)
                continue
        except TypeFactoryError as exc:
            rejected[index] = ("type_conversion", str(exc))
            continue
        conflicts.extend(single.conflicts)
        described = "; ".join(str(c) for c in single.conflicts)
        if policy is SchemaPolicy.strict:
            rejected[index] = ("schema_conflict", f"{described} (schema_policy: strict)")
        elif policy is SchemaPolicy.coerce:
            try:
                out[index] = coerce(doc, existing) if existing is not None else doc
                coerced += 1
            except TypeFactoryError as exc:
                rejected[index] = ("schema_conflict", f"{exc} (schema_policy: coerce)")
        else:
            as_json[index] = _conflicting_keys(existing, doc, reserved)

    kept = [i for i in range(len(docs)) if i not in rejected]
    typed = [{k: v for k, v in (out[i] or {}).items() if k not in as_json[i]} for i in kept]
    merged = merge_schemas(existing, infer_schema(typed, reserved), reserved)
    if merged.conflicts:  # each document fits alone, so together they do (variants)
        raise AssertionError(f"schema plan left conflicts: {merged.conflicts}")
    schema = _with_json_columns(merged.schema, as_json)
    columns = to_arrow([out[i] or {} for i in kept], schema, [as_json[i] for i in kept])
    return BatchPlan(
        schema=schema,
        kept=kept,
        columns=columns,
        rejected=rejected,
        added=merged.added + _new_json_columns(existing, schema),
        widened=merged.widened,
        conflicts=tuple(conflicts),
        coerced=coerced,
        kept_as_json=sum(1 for i in kept if as_json[i]),
    )


def _conflicting_keys(
    existing: pa.Schema | None, doc: dict[str, Any], reserved: Sequence[str]
) -> frozenset[str]:
    """The top-level keys whose value conflicts with the table's column."""
    return frozenset(
        key
        for key, value in doc.items()
        if merge_schemas(existing, infer_schema([{key: value}], reserved), reserved).conflicts
    )


def _with_json_columns(schema: pa.Schema, as_json: list[frozenset[str]]) -> pa.Schema:
    keys = sorted({k for keys in as_json for k in keys})
    have = set(schema.names)
    columns = [f for f in schema if f.name != NULLS_COLUMN]
    extra = [
        pa.field(name, pa.string())
        for name in dict.fromkeys(json_column(columns, k) for k in keys)
        if name not in have
    ]
    return pa.schema([*columns, *extra, schema.field(NULLS_COLUMN)], metadata=schema.metadata)


def _new_json_columns(existing: pa.Schema | None, schema: pa.Schema) -> tuple[str, ...]:
    before = set(existing.names) if existing is not None else set()
    return tuple(n for n in schema.names if n.endswith("%json") and n not in before)
