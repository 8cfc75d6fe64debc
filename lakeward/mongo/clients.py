"""MongoDB clients shared by the activities of a worker: one pool per (URI, options).

A MongoClient is a connection pool; opening one per activity pays a TLS handshake, an auth
round trip and server discovery every time, and drops the pool right after. While a worker runs
(`shared_clients`), readers take their client from here and leave it open; it is closed at the
worker's shutdown. `AsyncMongoClient` is bound to the event loop it first ran on, so clients are
shared only on the loop the cache was opened on (the worker's); anywhere else (the CLI, a test
calling the engine, a thread with a loop of its own) `async_client` makes a client for the block
and closes it after, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from pymongo import AsyncMongoClient

__all__ = ["MongoClientCache", "async_client", "hosts_of", "retire_client", "shared_clients"]

#: A superseded client (rotated credentials) is closed this long after, so operations in
#: flight on it finish while its credentials still work.
RETIRE_GRACE_S = 30.0


def hosts_of(uri: str) -> str:
    """The hosts of a connection string, without user, password or options: what names a
    source cluster in an error or a breaker (`mongodb://u:p@a:1,b:2/db?x` -> `a:1,b:2`)."""
    _, _, rest = uri.partition("://")
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    return netloc.rpartition("@")[2]


class MongoClientCache:
    """Clients by (URI, options), each with minPoolSize/maxPoolSize, on one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, min_pool_size: int, max_pool_size: int):
        self.loop = loop
        self.min_pool_size = min_pool_size
        self.max_pool_size = max_pool_size
        # Keyed by the URI, which may hold a password: the key never leaves this dict.
        self._clients: dict[tuple[str, tuple[tuple[str, Any], ...]], AsyncMongoClient[Any]] = {}

    def get(self, uri: str, options: dict[str, Any]) -> AsyncMongoClient[Any]:
        key = (uri, tuple(sorted(options.items())))
        client = self._clients.get(key)
        if client is None:
            client = AsyncMongoClient(
                uri,
                minPoolSize=self.min_pool_size,
                maxPoolSize=self.max_pool_size,
                **options,
            )
            self._clients[key] = client
        return client

    def __len__(self) -> int:
        return len(self._clients)

    def retire(self, uri: str, grace_s: float = RETIRE_GRACE_S) -> int:
        """Stop handing out the clients of `uri` (superseded credentials) and close them after
        `grace_s`; safe from any thread. Returns how many were retired."""
        retired = [key for key in self._clients if key[0] == uri]
        clients = [self._clients.pop(key) for key in retired]

        async def close_all() -> None:
            for client in clients:
                await client.close()

        def close_later() -> None:
            self.loop.call_later(grace_s, lambda: self.loop.create_task(close_all()))

        if clients and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(close_later)
        return len(clients)

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()


_shared: MongoClientCache | None = None


@contextlib.asynccontextmanager
async def shared_clients(
    min_pool_size: int = 5, max_pool_size: int = 50
) -> AsyncIterator[MongoClientCache]:
    """Share clients on this event loop until the block ends, then close them (a worker's
    lifetime)."""
    global _shared
    cache = MongoClientCache(asyncio.get_running_loop(), min_pool_size, max_pool_size)
    previous, _shared = _shared, cache
    try:
        yield cache
    finally:
        _shared = previous
        await cache.close()


def retire_client(uri: str) -> int:
    """Retire the worker's shared clients of `uri` (its credentials were rotated)."""
    cache = _shared
    return 0 if cache is None else cache.retire(uri)


@contextlib.asynccontextmanager
async def async_client(uri: str, **options: Any) -> AsyncIterator[AsyncMongoClient[Any]]:
    """A client for the block: the worker's shared one when on its loop, else a new one that
    is closed when the block ends."""
    cache = _shared
    if cache is not None and asyncio.get_running_loop() is cache.loop:
        yield cache.get(uri, options)
        return
    client: AsyncMongoClient[Any] = AsyncMongoClient(uri, **options)
    try:
        yield client
    finally:
        await client.close()
