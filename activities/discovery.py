"""Which collections a whole-database pipeline replicates (source.collections empty)."""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.contracts import (
    DISCOVER_COLLECTIONS,
    DiscoverCollectionsInput,
    DiscoverCollectionsResult,
)
from activities.credentials import secret_failure
from lakeward.credentials import source_uri
from lakeward.mongo.admin import replicable_collections
from lakeward.mongo.errors import CaptureSourceError
from lakeward.mongo.tls import explained_tls_failures
from lakeward.secrets import SecretReferenceError
from lakeward.settings import Settings
from workflows.spec import CHANGE_LOG_SUFFIX
from workflows.spec_checks import check_collection_name

__all__ = ["discover_collections"]


@activity.defn(name=DISCOVER_COLLECTIONS)
def discover_collections(input: DiscoverCollectionsInput) -> DiscoverCollectionsResult:
    """Sync (pymongo): runs in the I/O thread pool. Unreachable servers are retried by the
    workflow's retry policy; a refused listing or a bad secret reference are not."""
    spec = input.spec
    try:
        # A function activity has no settings object of its own: the worker's environment.
        uri = source_uri(spec.source, Settings())
    except SecretReferenceError as exc:
        raise secret_failure(exc) from None
    try:
        with explained_tls_failures(uri):
            names = replicable_collections(uri, spec.source.database)
    except CaptureSourceError as exc:
        raise ApplicationError(str(exc), type="CaptureSourceError", non_retryable=True) from exc
    names = _nameable(names, spec.source.database)
    if spec.sink.change_log:
        # Its change log would be the table of `<name>__changes`: that one is left out.
        present = set(names)
        names = [
            n
            for n in names
            if not (n.endswith(CHANGE_LOG_SUFFIX) and n[: -len(CHANGE_LOG_SUFFIX)] in present)
        ]
    return DiscoverCollectionsResult(collections=names)


def _nameable(names: list[str], database: str) -> list[str]:
    """The names a listed spec would accept too: a collection whose name cannot be a Kafka topic
    part or a lake directory (`..`, `/`, spaces, ...) is left out, with a warning, rather than
    written to a path outside the lake or failing capture."""
    kept = []
    for name in names:
        try:
            kept.append(check_collection_name(name))
        except ValueError as exc:
            activity.logger.warning("collection %s.%r left out: %s", database, name, exc)
    return kept
