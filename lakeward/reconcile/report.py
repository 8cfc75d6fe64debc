"""The reconciliation report table, `<lake>/_lakeward/reconciliations`: one row per run.

A row holds the run's counts and outcome and its first differences as a JSON array (class, key
and field-level differences), so a single table answers both "how did the last runs go" and
"what differed". The row is committed with a Delta `txn` (app id `reconcile/<run id>`), so a
retried write of the same run adds nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import orjson
import pyarrow as pa

from lakeward.delta.table import TxnTable

__all__ = ["REPORT_SCHEMA", "report_uri", "write_report"]

_TS = pa.timestamp("us", tz="UTC")

REPORT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("pipeline", pa.string(), nullable=False),
        pa.field("collections", pa.list_(pa.field("element", pa.string()))),
        pa.field("mode", pa.string()),
        pa.field("trigger", pa.string()),
        pa.field("outcome", pa.string(), nullable=False),
        pa.field("started_at", _TS),
        pa.field("finished_at", _TS),
        pa.field("documents", pa.int64()),
        pa.field("ranges", pa.int64()),
        pa.field("leaves", pa.int64()),
        pa.field("mismatching_leaves", pa.int64()),
        pa.field("missing", pa.int64()),
        pa.field("extra", pa.int64()),
        pa.field("changed", pa.int64()),
        pa.field("repaired", pa.int64()),
        pa.field("unsettled", pa.int64()),
        pa.field("settled", pa.bool_()),
        pa.field("error", pa.string()),
        #: JSON array: [{collection, key, key_type, kind, fields: [{path, source, lake}]}]
        pa.field("differences", pa.string()),
        pa.field("truncated", pa.bool_()),
    ]
)


def report_uri(lake: str) -> str:
    return f"{lake.rstrip('/')}/_lakeward/reconciliations"


def write_report(uri: str, options: Mapping[str, str], row: Mapping[str, Any]) -> int | None:
    """Append one run's row (keys as REPORT_SCHEMA; `differences` a list of dicts, times as
    epoch seconds) once; returns the table version holding it."""
    table = TxnTable(uri, REPORT_SCHEMA, options)
    app = f"reconcile/{row['id']}"
    read = table.applied_versions([app])
    if read[app] is not None:
        return None  # written by an earlier attempt
    values = dict(row)
    for name in ("started_at", "finished_at"):
        values[name] = dt.datetime.fromtimestamp(float(values.get(name) or 0), dt.UTC)
    values["differences"] = orjson.dumps(values.get("differences") or []).decode()
    rows = pa.Table.from_pylist(
        [{f.name: values.get(f.name) for f in REPORT_SCHEMA}], schema=REPORT_SCHEMA
    )
    return table.append(rows, {app: 0}, read).version
