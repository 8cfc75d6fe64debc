"""Permission errors on a real authenticated mongod: each names what is missing and the fix.

The shared test stack runs mongod without authentication, so this module starts its own: a
single-node replica set with --auth and a keyFile, bound to 127.0.0.1 on a free port, its data
under pytest's tmp directory. The replica set is initiated and the first user created through
the localhost exception; then users with narrow roles. A user with enough roles captures a
change through each strategy, so the failures are the roles' doing, not the setup's.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from lakeward.capture import Capture, build_capture
from lakeward.events import ChangeEvent
from lakeward.mongo.admin import ensure_replica_set
from lakeward.mongo.change_stream import ChangeStreamReader
from lakeward.mongo.errors import CaptureSourceError, HistoryLostError
from lakeward.mongo.oplog import OplogReader
from tests.test_capture_faults import private_mongod
from tests.test_capture_strategies import (
    STRATEGIES,
    eventually,
    make_spec,
    oplog_now,
    reader,
    running,
)
from workflows.spec import PipelineSpec

DB = "shop"
#: Users and their roles (all defined in admin). `reader` is what change streams need; the oplog
#: strategy also needs read on local.
ROLES: dict[str, list[Any]] = {
    "reader": [{"role": "read", "db": DB}],
    "oplog_reader": [{"role": "read", "db": DB}, {"role": "read", "db": "local"}],
    "local_only": [{"role": "read", "db": "local"}],
    "finder": ["findOnly"],  # find on the database, but not changeStream
    "orders_reader": ["ordersOnly"],  # find and changeStream on the listed collection only
    "stranger": [{"role": "read", "db": "elsewhere"}],
}


@dataclass
class AuthMongo:
    """The private authenticated mongod: its address and the users' passwords."""

    port: int
    passwords: dict[str, str] = field(default_factory=dict)

    @property
    def mongo_uri(self) -> str:
        """Without credentials: what a pipeline spec may hold."""
        return f"mongodb://127.0.0.1:{self.port}/"

    def uri(self, user: str, password: str | None = None, query: str = "") -> str:
        password = self.passwords[user] if password is None else password
        return f"mongodb://{user}:{password}@127.0.0.1:{self.port}/{query}"

    def admin(self) -> MongoClient[dict[str, Any]]:
        return MongoClient(self.uri("admin"), serverSelectionTimeoutMS=10_000)


def _create_users(mongo: AuthMongo) -> None:
    # The localhost exception allows this one user; every other call needs a login.
    with MongoClient("127.0.0.1", mongo.port, directConnection=True) as first:
        mongo.passwords["admin"] = secrets.token_hex(12)
        first.admin.command("createUser", "admin", pwd=mongo.passwords["admin"], roles=["root"])
    with mongo.admin() as client:
        find_only = {"resource": {"db": DB, "collection": ""}, "actions": ["find"]}
        client.admin.command("createRole", "findOnly", privileges=[find_only], roles=[])
        orders_only = {
            "resource": {"db": DB, "collection": "orders"},
            "actions": ["find", "changeStream"],
        }
        client.admin.command("createRole", "ordersOnly", privileges=[orders_only], roles=[])
        for user, roles in ROLES.items():
            mongo.passwords[user] = secrets.token_hex(12)
            client.admin.command("createUser", user, pwd=mongo.passwords[user], roles=roles)
        client[DB].orders.insert_one({"_id": "seed"})


@pytest.fixture(scope="module")
def auth_mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthMongo]:
    root: Path = tmp_path_factory.mktemp("auth-mongod")
    key = root / "keyfile"  # --auth on a replica set needs one: the members' shared secret
    key.write_text(secrets.token_hex(48))  # base64 characters only
    key.chmod(0o600)
    with private_mongod(
        root, "--replSet", "rs0", "--auth", "--keyFile", str(key), "--oplogSize", "64",
        what="authenticated mongod",
    ) as port:  # fmt: skip
        ensure_replica_set("127.0.0.1", port)  # allowed by the localhost exception
        mongo = AuthMongo(port)
        _create_users(mongo)
        yield mongo


def _capture(
    auth_mongo: AuthMongo, kafka: Any, unique: str, strategy: str, uri: str
) -> tuple[PipelineSpec, Capture]:
    """A capture of shop.orders from now, logged in with `uri` (the spec holds no password)."""
    spec = make_spec(auth_mongo, DB, f"perm-{unique}", ["orders"], capture=strategy)
    with auth_mongo.admin() as client:
        start_at = oplog_now(client)
    capture = build_capture(spec, uri, kafka.kafka_bootstrap, f"t{unique}", start_at=start_at)
    return spec, capture


async def _open(source: ChangeStreamReader | OplogReader) -> None:
    async with source:
        pass


def _source(strategy: str, uri: str) -> ChangeStreamReader | OplogReader:
    # A start time makes the change stream reader ask serverStatus first (its history check).
    if strategy == "change_stream":
        return ChangeStreamReader(uri, DB, ["orders"], start_at=time.time())
    return OplogReader(uri, DB, ["orders"], start_at=time.time())


# -- enough roles ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "user"), [("change_stream", "reader"), ("oplog", "oplog_reader")]
)
async def test_user_with_the_documented_roles_captures(auth_mongo, kafka, unique, strategy, user):
    # `reader` has no clusterMonitor: the change stream reader's serverStatus is refused, and
    # capture goes on without that check.
    spec, capture = _capture(auth_mongo, kafka, unique, strategy, auth_mongo.uri(user))
    key = f"p-{unique}"
    with reader(kafka.kafka_bootstrap, spec.topic(f"t{unique}", "orders")) as data:

        def changes() -> list[ChangeEvent]:
            return [r.event for r in data.poll() if r.event.key == key]

        async with running(capture):
            with auth_mongo.admin() as client:
                client[DB].orders.insert_one({"_id": key, "n": 1})
                client[DB].orders.update_one({"_id": key}, {"$set": {"n": 2}})
            await eventually(lambda: len(changes()) >= 2, "the insert and the update")
        events = changes()
    assert [e.op for e in events] == ["c", "u"]
    assert events[1].after == {"_id": key, "n": 2}  # the look-up read the database


# -- missing privileges ---------------------------------------------------------------------------


async def test_oplog_without_read_on_local_names_the_role(auth_mongo, kafka, unique) -> None:
    _, capture = _capture(auth_mongo, kafka, unique, "oplog", auth_mongo.uri("reader"))
    with pytest.raises(CaptureSourceError) as caught:
        await asyncio.wait_for(capture.run(lambda progress: None), 60)
    assert not isinstance(caught.value, HistoryLostError)
    message = str(caught.value)
    assert "MongoDB user 'reader' is not allowed to read the changes" in message
    assert "not authorized to run find on local.oplog.rs" in message
    assert "role read on 'local', or clusterMonitor" in message
    assert (
        'db.getSiblingDB("admin").grantRolesToUser("reader", '
        '[{role: "read", db: "local"}, {role: "read", db: "shop"}])'
    ) in message


# A database's change stream needs the privileges on all of its collections, not the listed ones.
@pytest.mark.parametrize("user", ["finder", "orders_reader", "stranger"])
async def test_change_stream_without_the_privilege_names_the_role(
    auth_mongo, kafka, unique, user
) -> None:
    _, capture = _capture(auth_mongo, kafka, unique, "change_stream", auth_mongo.uri(user))
    with pytest.raises(CaptureSourceError) as caught:
        await asyncio.wait_for(capture.run(lambda progress: None), 60)
    assert not isinstance(caught.value, HistoryLostError)
    message = str(caught.value)
    assert f"MongoDB user {user!r} is not allowed to read the changes" in message
    assert "not authorized to open a change stream ($changeStream) on 'shop'" in message
    assert "find and changeStream actions on all of its collections" in message
    assert f'grantRolesToUser("{user}", [{{role: "read", db: "shop"}}])' in message


@pytest.mark.parametrize(
    ("user", "options", "denied"),
    [
        # Read on local alone: the oplog opens, the look-up of an update is refused.
        ("local_only", {}, "find on shop.orders"),
        # Stored pre-images: no built-in role reads them.
        ("oplog_reader", {"oplog_update": "diff"}, "find on config.system.preimages"),
    ],
)
async def test_oplog_reader_refused_at_the_first_update_names_the_role(
    auth_mongo, unique, user, options, denied
) -> None:
    with auth_mongo.admin() as client:
        start_at = oplog_now(client)
        client[DB].orders.insert_one({"_id": unique, "n": 1})
        client[DB].orders.update_one({"_id": unique}, {"$set": {"n": 2}})
    update_mode = options.get("oplog_update", "lookup")
    source = OplogReader(
        auth_mongo.uri(user), DB, ["orders"], start_at=start_at, update_mode=update_mode
    )

    async def read_on() -> None:
        while True:
            await source.next_batch(100, 0.5, 1.0)

    async with source:
        with pytest.raises(CaptureSourceError) as caught:
            await asyncio.wait_for(read_on(), 60)
    message = str(caught.value)
    assert f"MongoDB user {user!r} is not allowed to read the changes" in message
    assert f"not authorized to run {denied}" in message
    assert "role read on 'shop'" in message
    if update_mode == "diff":
        assert "no built-in role grants" in message
        assert '{resource: {db: "config", collection: "system.preimages"}' in message


# -- logins ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(
    ("password", "query", "auth_source"),
    [("wrong", "", "admin"), (None, "?authSource=shop", "shop")],
    ids=["wrong_password", "wrong_auth_source"],
)
async def test_refused_login_is_a_clear_error_at_once(
    auth_mongo, strategy, password, query, auth_source
) -> None:
    source = _source(strategy, auth_mongo.uri("reader", password, query))
    # Well under the driver's 10 s server selection: a reader that swallowed the refusal and
    # tried again would wait that out before failing the same way.
    with pytest.raises(CaptureSourceError) as caught:
        await asyncio.wait_for(_open(source), 5)
    message = str(caught.value)
    assert f"MongoDB refused the login of user 'reader' with authSource {auth_source!r}" in message
    assert "server error 18: Authentication failed." in message
    assert "check the user name and password in the MongoDB URI" in message
    assert "authSource, the database the user was created in" in message
    assert auth_mongo.passwords["reader"] not in message


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_no_user_in_the_uri_says_to_add_one(auth_mongo, strategy) -> None:
    with pytest.raises(CaptureSourceError) as caught:
        await asyncio.wait_for(_open(_source(strategy, auth_mongo.mongo_uri)), 5)
    message = str(caught.value)
    assert "MongoDB requires a login and the URI names no user" in message
    assert "mongodb://<user>:<password>@<host>/?authSource=<db>" in message
    assert "role read on 'shop'" in message


async def test_refused_login_through_capture_fails_the_run(auth_mongo, kafka, unique) -> None:
    uri = auth_mongo.uri("oplog_reader", "wrong")
    _, capture = _capture(auth_mongo, kafka, unique, "oplog", uri)
    with pytest.raises(CaptureSourceError, match="refused the login of user 'oplog_reader'"):
        await asyncio.wait_for(capture.run(lambda progress: None), 60)
