"""Secrets inside activities: the failure a secret reference maps to, and capture that
reconnects when its source credentials rotate.

Capture holds a MongoDB connection for as long as it runs, so re-resolving at the next
activity start is not enough: `reconnecting` re-resolves the source every
`credentials_check_s` and, when the connection string changed (a new KV version, new dynamic
credentials) or MongoDB refused the login, ends the run (its Kafka transaction aborted) and
starts it again from the committed checkpoint with the new credentials (within the same
activity attempt: no retry, no backoff). Nothing is lost or
doubled: the resume token commits in the same Kafka transaction as the events it covers, and
apply's MERGE is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from temporalio.exceptions import ApplicationError

from lakeward.mongo.errors import SourceCredentialsError
from lakeward.secrets import SecretExpiredError, SecretReferenceError

__all__ = ["reconnecting", "secret_failure"]

_log = logging.getLogger("lakeward.capture")

T = TypeVar("T")


def secret_failure(exc: SecretReferenceError) -> ApplicationError:
    """A reference Vault could not answer for is retried (`SecretUnavailable`, shown in the
    status's `retrying`); a wrong reference fails the pipeline (`SecretReferenceError`)."""
    if exc.transient:
        return ApplicationError(str(exc), type="SecretUnavailable")
    return ApplicationError(str(exc), type="SecretReferenceError", non_retryable=True)


async def reconnecting(
    resolve_uri: Callable[[], str],
    run: Callable[[str], Awaitable[T]],
    check_s: float,
    grace_s: float = 30.0,
) -> T:
    """`run(uri)` with the source's current connection string, again with the new one each
    time the credentials rotate. When MongoDB refuses the credentials (login refused, a user
    dropped or changed under the stream), new ones are awaited for `grace_s` before the error
    is raised."""
    uri = await asyncio.to_thread(resolve_uri)
    while True:
        task = asyncio.ensure_future(run(uri))
        watch = asyncio.ensure_future(_until_changed(uri, resolve_uri, check_s))
        try:
            await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Also when this coroutine is cancelled (pause, stop, worker shutdown).
            watch.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if not task.cancelled() and task.exception() is None:
            return task.result()
        if watch.done() and not watch.cancelled():
            uri = watch.result()  # raises when the credentials cannot be resolved any more
            _log.info("source credentials changed; capture reconnects from its checkpoint")
        else:
            error = task.exception()
            assert error is not None
            # Refused credentials while a rotation is half done (the user changed in MongoDB,
            # the secret not written yet): wait for the new secret a while before failing.
            if not isinstance(error, SourceCredentialsError):
                raise error
            fresh = await _changed_within(uri, resolve_uri, grace_s, check_s)
            if fresh is None:
                raise error
            uri = fresh
            _log.info("MongoDB refused the old credentials; capture reconnects with new ones")


async def _until_changed(uri: str, resolve_uri: Callable[[], str], check_s: float) -> str:
    """The new connection string once it differs from `uri`. While Vault does not answer, the
    credentials in use go on working; an expired lease ends the wait with its error."""
    while True:
        await asyncio.sleep(check_s)
        try:
            fresh = await asyncio.to_thread(resolve_uri)
        except SecretExpiredError:
            raise
        except SecretReferenceError as exc:
            _log.warning("re-resolving the source credentials failed: %s", exc)
            continue
        if fresh != uri:
            return fresh


async def _changed_within(
    uri: str, resolve_uri: Callable[[], str], grace_s: float, check_s: float
) -> str | None:
    """The new connection string if it changes within `grace_s`, else None."""
    deadline = asyncio.get_running_loop().time() + grace_s
    while True:
        with contextlib.suppress(SecretReferenceError):
            fresh = await asyncio.to_thread(resolve_uri)
            if fresh != uri:
                return fresh
        if asyncio.get_running_loop().time() >= deadline:
            return None
        await asyncio.sleep(min(check_s, 1.0))
