"""Where the API lets a pipeline write: local sinks under LAKEWARD_LAKE_ROOT, when it is set.

The spec itself already refuses paths that climb out of their directory (`..`, encoded dots,
backslashes; workflows/spec_checks.py), but any absolute path passes it, and the workers write
wherever the spec says with their own file permissions. An operator who wants one directory for
every lake sets the root; the API then refuses a local sink that resolves (symlinks followed, at
creation time) outside it. s3:// sinks are the object store's permissions' business.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from api.errors import Problem
from workflows.spec import PipelineSpec

__all__ = ["check_lake_root", "local_sink_path"]


def local_sink_path(spec: PipelineSpec) -> Path | None:
    """The sink's directory when it is local (a path or file://), else None."""
    parts = urlsplit(spec.sink.uri)
    if parts.scheme == "file":
        return Path(parts.path)
    return None if parts.scheme else Path(spec.sink.uri)


def check_lake_root(spec: PipelineSpec, root: Path | None) -> None:
    """Refuse (422) a local sink outside `root`; nothing to check when `root` is None."""
    path = local_sink_path(spec)
    if root is None or path is None:
        return
    resolved, allowed = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    if not resolved.is_relative_to(allowed):
        message = (
            f"a local sink must lie under the lake root {allowed} (LAKEWARD_LAKE_ROOT); "
            f"use e.g. {allowed}/<name>, or an s3:// sink"
        )
        raise Problem(
            422,
            "Invalid pipeline spec",
            f"sink.uri: {message}",
            errors=[{"field": "sink.uri", "message": message}],
        )
