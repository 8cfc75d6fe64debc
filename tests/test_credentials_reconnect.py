"""`reconnecting`: the logic that restarts capture on rotated credentials (pure asyncio, no
servers; the real thing runs in tests/test_vault_rotation.py)."""

from __future__ import annotations

import asyncio

import pytest

from activities.credentials import reconnecting, secret_failure
from lakeward.mongo.errors import CaptureSourceError, SourceCredentialsError, SourceLoginRefused
from lakeward.secrets import SecretExpiredError, SecretReferenceError


class Source:
    """A connection string that changes when told; records every run and how it ended."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.runs: list[str] = []
        self.cancelled: list[str] = []
        self.fail_with: BaseException | None = None
        self.finish = asyncio.Event()
        self.failure: BaseException | None = None
        self.resolutions = 0

    def resolve(self) -> str:
        self.resolutions += 1
        if self.failure is not None:
            raise self.failure
        return self.uri

    async def run(self, uri: str) -> str:
        self.runs.append(uri)
        try:
            if self.fail_with is not None:
                error, self.fail_with = self.fail_with, None
                raise error
            await self.finish.wait()
            return f"done with {uri}"
        except asyncio.CancelledError:
            self.cancelled.append(uri)
            raise


async def _until(condition, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_changed_credentials_restart_the_run_with_the_new_ones() -> None:
    source = Source("mongodb://u:one@h/")
    running = asyncio.create_task(reconnecting(source.resolve, source.run, check_s=0.02))
    await _until(lambda: source.runs == ["mongodb://u:one@h/"])
    source.uri = "mongodb://u:two@h/"
    await _until(lambda: len(source.runs) == 2)
    assert source.cancelled == ["mongodb://u:one@h/"]
    source.finish.set()
    assert await running == "done with mongodb://u:two@h/"


async def test_refused_credentials_wait_for_new_ones_within_the_grace() -> None:
    source = Source("mongodb://u:old@h/")
    source.fail_with = SourceLoginRefused("refused")
    running = asyncio.create_task(reconnecting(source.resolve, source.run, check_s=10, grace_s=5))
    await _until(lambda: len(source.runs) == 1)
    source.uri = "mongodb://u:new@h/"  # the secret is written after MongoDB changed
    await _until(lambda: len(source.runs) == 2)
    source.finish.set()
    assert await running == "done with mongodb://u:new@h/"


async def test_refused_credentials_that_never_change_stand_after_the_grace() -> None:
    source = Source("mongodb://u:wrong@h/")
    source.fail_with = SourceCredentialsError("dropped")
    with pytest.raises(SourceCredentialsError):
        await reconnecting(source.resolve, source.run, check_s=10, grace_s=0.05)
    assert source.runs == ["mongodb://u:wrong@h/"]


async def test_other_source_errors_are_not_waited_on() -> None:
    source = Source("mongodb://h/")
    source.fail_with = CaptureSourceError("no replica set")
    with pytest.raises(CaptureSourceError, match="no replica set"):
        await reconnecting(source.resolve, source.run, check_s=10, grace_s=60)


async def test_vault_away_keeps_the_run_but_an_expired_lease_ends_it() -> None:
    source = Source("mongodb://u:one@h/")
    running = asyncio.create_task(reconnecting(source.resolve, source.run, check_s=0.02))
    await _until(lambda: len(source.runs) == 1)
    source.failure = SecretReferenceError("Vault does not answer", transient=True)
    failing_since = source.resolutions
    await _until(lambda: source.resolutions >= failing_since + 3)  # checks fail; the run goes on
    assert not running.done() and source.cancelled == []
    source.failure = SecretExpiredError("the lease expired")
    with pytest.raises(SecretExpiredError):
        await running
    assert source.cancelled == ["mongodb://u:one@h/"]


def test_vault_outages_are_retried_and_wrong_references_are_not() -> None:
    away = secret_failure(SecretExpiredError("the lease expired"))
    assert away.type == "SecretUnavailable" and not away.non_retryable
    wrong = secret_failure(SecretReferenceError("no key 'pasword'"))
    assert wrong.type == "SecretReferenceError" and wrong.non_retryable
