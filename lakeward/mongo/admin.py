"""Administrative calls to a mongod: readiness and replica set (the local stack and tests),
pre-images and the collections a whole-database pipeline replicates (activities)."""

from __future__ import annotations

import time
from typing import Any

from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import OperationFailure, PyMongoError

from lakeward.mongo.errors import CaptureSourceError

__all__ = [
    "enable_pre_and_post_images",
    "ensure_replica_set",
    "is_primary",
    "ping",
    "replicable_collections",
]


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


def enable_pre_and_post_images(uri: str, database: str, collections: list[str]) -> list[str]:
    """Turn on `changeStreamPreAndPostImages` for the collections; returns the ones changed.

    A collection that does not exist yet is created with the option, so its first updates
    already keep pre-images. Needs the collMod privilege (role dbAdmin) on the database.
    """
    changed: list[str] = []
    options: dict[str, Any] = {"changeStreamPreAndPostImages": {"enabled": True}}
    client: MongoClient[dict[str, Any]]
    with MongoClient(uri, serverSelectionTimeoutMS=10_000) as client:
        db: Database[dict[str, Any]] = client[database]
        for name in collections:
            infos = list(db.list_collections(filter={"name": name}))
            if infos and infos[0].get("options", {}).get("changeStreamPreAndPostImages") == {
                "enabled": True
            }:
                continue
            try:
                if infos:
                    db.command({"collMod": name, **options})
                else:
                    db.command({"create": name, **options})
            except OperationFailure as exc:
                if exc.code != 48:  # NamespaceExists: created meanwhile, so modify it
                    raise _cannot_enable(database, name, exc) from exc
                try:
                    db.command({"collMod": name, **options})
                except OperationFailure as again:
                    raise _cannot_enable(database, name, again) from again
            changed.append(name)
    return changed


def _cannot_enable(database: str, collection: str, exc: OperationFailure) -> CaptureSourceError:
    return CaptureSourceError(
        f"{database}.{collection}: cannot enable changeStreamPreAndPostImages "
        f"(server error {exc.code}); grant the user collMod on the database (role dbAdmin), "
        "or enable it with collMod yourself and set source.enable_pre_images: false"
    )


def replicable_collections(uri: str, database: str) -> list[str]:
    """The database's collections a pipeline can replicate, sorted: views (no change streams),
    `system.*` collections and time-series buckets are left out."""
    client: MongoClient[dict[str, Any]]
    with MongoClient(uri, serverSelectionTimeoutMS=10_000) as client:
        try:
            infos = list(
                client[database].list_collections(
                    filter={"type": "collection"}, authorizedCollections=True, nameOnly=True
                )
            )
        except OperationFailure as exc:
            raise CaptureSourceError(
                f"cannot list the collections of {database!r} (server error {exc.code}: "
                f"{str(exc).splitlines()[0][:200]}); the pipeline's user needs the "
                "listCollections action on the database (role read grants it), or list the "
                "collections in source.collections"
            ) from exc
    names = (info["name"] for info in infos)
    return sorted(n for n in names if not n.startswith("system."))
