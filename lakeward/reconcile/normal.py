"""The normalised form both sides hash: what the type factory writes, read back.

The lake's documents are read back with `from_arrow`. A source document is put through the same
plan apply uses (`plan_batch` against the table's document columns and the pipeline's schema
policy) and read back the same way, so a widened column (int32 -> int64 -> double), a conflicting
value kept as Extended JSON, or a coerced value hashes as the lake holds it when the pipeline
applied it correctly, and only a real difference remains.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from lakeward.apply import document_columns, documents
from lakeward.delta.table import RESERVED_COLUMNS
from lakeward.schema_plan import plan_batch
from lakeward.typefactory import from_arrow
from workflows.spec import SchemaPolicy

__all__ = ["lake_documents", "one_by_one", "source_documents"]


def source_documents(
    docs: Sequence[dict[str, Any]],
    table_schema: pa.Schema | None,
    policy: SchemaPolicy = SchemaPolicy.permissive,
) -> list[dict[str, Any] | None]:
    """Source documents as the lake would hold them (None: apply would dead-letter it).

    Planned as one batch, the way apply plans one: a value that needs a widening the table has
    not had yet widens the whole batch, which can only make a leaf mismatch spuriously; keys are
    compared one document at a time (`one_by_one`) before anything is reported.
    """
    columns = document_columns(table_schema) if table_schema is not None else None
    plan = plan_batch(columns, docs, policy, RESERVED_COLUMNS)
    back = from_arrow(plan.columns)
    out: list[dict[str, Any] | None] = [None] * len(docs)
    for index, doc in zip(plan.kept, back, strict=True):
        out[index] = doc
    return out


def one_by_one(
    docs: Sequence[dict[str, Any]],
    table_schema: pa.Schema | None,
    policy: SchemaPolicy = SchemaPolicy.permissive,
) -> list[dict[str, Any] | None]:
    """`source_documents`, each document planned alone (no batch-mate widens it)."""
    return [source_documents([d], table_schema, policy)[0] for d in docs]


def lake_documents(rows: pa.Table) -> list[dict[str, Any] | None]:
    """The documents of current-state rows (None for a tombstone)."""
    return documents(rows)
