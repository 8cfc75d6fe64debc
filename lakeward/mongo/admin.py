"""Administrative calls the local stack and tests make to a mongod (readiness, replica set)."""

from __future__ import annotations

import time

from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

__all__ = ["ensure_replica_set", "is_primary", "ping"]


def _client(host: str, port: int) -> MongoClient:
    # directConnection: before initiation the node is not yet a replica-set member.
    return MongoClient(host, port, directConnection=True, serverSelectionTimeoutMS=1000)


def ping(host: str, port: int) -> bool:
    try:
        with _client(host, port) as client:
            client.admin.command("ping")
        return True
    except PyMongoError:
        return False


def is_primary(host: str, port: int) -> bool:
    try:
        with _client(host, port) as client:
            return bool(client.admin.command("hello").get("isWritablePrimary"))
    except PyMongoError:
        return False


def ensure_replica_set(host: str, port: int, name: str = "rs0", timeout: float = 60.0) -> None:
    """Initiate a single-node replica set if needed and wait until the node is PRIMARY."""
    with _client(host, port) as client:
        try:
            client.admin.command("replSetGetStatus")
        except OperationFailure as exc:
            if exc.code != 94:  # NotYetInitialized
                raise
            client.admin.command(
                "replSetInitiate",
                {"_id": name, "members": [{"_id": 0, "host": f"{host}:{port}"}]},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if client.admin.command("hello").get("isWritablePrimary"):
                return
            time.sleep(0.1)
    raise TimeoutError(f"mongod at {host}:{port} did not become PRIMARY within {timeout:.0f}s")
