"""Where a pipeline's tables live: deltalake storage options for its sink, resolved at use.

A sink on local disk needs none. An ``s3://`` sink takes the worker's
``LAKEWARD_LAKE_STORAGE_OPTIONS`` and then the pipeline's ``sink.storage_options`` over them,
key by key; every value may be a secret reference (``env:``, ``file:``, ``vault:``), resolved here,
inside the activity, so credentials never travel through workflow history.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from lakeward.secrets import resolve
from lakeward.settings import Settings
from workflows.spec import Sink

__all__ = ["is_object_store", "lake_storage_options", "storage_options"]


def is_object_store(uri: str) -> bool:
    return urlsplit(uri).scheme in ("s3", "s3a")


def storage_options(sink: Sink, settings: Settings) -> dict[str, str]:
    """The resolved deltalake ``storage_options`` for the sink's tables (empty on local disk).

    Raises SecretReferenceError naming a reference that cannot be resolved.
    """
    return lake_storage_options(sink.uri, settings, sink.storage_options)


def lake_storage_options(
    uri: str, settings: Settings, overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The settings' storage options with `overrides` over them key by key, resolved.

    Empty for a lake on local disk. `lakeward query --storage-option` passes its overrides here.
    Raises SecretReferenceError naming a reference that cannot be resolved.
    """
    if not is_object_store(uri):
        return {}
    merged = {**settings.lake_storage_options, **(overrides or {})}
    return {key: resolve(value) for key, value in merged.items()}
