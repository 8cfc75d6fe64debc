"""Dynamic credentials with leases, against OpenBao's database engine and a real PostgreSQL.

OpenBao has no MongoDB plugin, so the lease handling (the same code for every database
engine) is shown with its PostgreSQL plugin: a private postgres on a free loopback port, a role
whose credentials live 4 s and at most 10 s. The credentials are renewed (the lease's expire
time moves), replaced before max_ttl (a new user that logs in with psql), and when the lease
expires while OpenBao is stopped, resolving says so clearly; once OpenBao answers again,
resolving recovers with new credentials.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lakeward import vault
from lakeward.secrets import SecretExpiredError, resolve_many
from lakeward.settings import StackSettings
from tests.test_capture_faults import _free_port, stop_process
from tests.test_capture_strategies import eventually
from tests.vault_helpers import configured_vault, root_client, vault_stack

__all__ = ["configured_vault", "vault_stack"]  # fixtures

PG_BIN = Path("/usr/lib/postgresql/15/bin")
TTL_S, MAX_TTL_S = 4, 10


def _pg_tool(name: str) -> str:
    found = shutil.which(name) or (str(PG_BIN / name) if (PG_BIN / name).exists() else None)
    assert found, f"{name} is missing: install Debian postgresql (scripts/setup.sh does)"
    return found


@dataclass
class Postgres:
    port: int
    password: str  # of the superuser `postgres`, which Vault manages roles with

    def current_user(self, user: str, password: str) -> str:
        """Log in with psql as `user`; the server's current_user ('' when refused)."""
        result = subprocess.run(
            [_pg_tool("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", user,
             "-d", "postgres", "-tAc", "select current_user"],
            env={**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5"},
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        return result.stdout.strip() if result.returncode == 0 else ""


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[Postgres]:
    # Not under pytest's tmp (mode 0700, root's): postgres refuses to run as root, so as root
    # the server runs as the `postgres` user, which must reach its folder.
    root = Path(tempfile.mkdtemp(prefix="lakeward-pg-"))
    password = secrets.token_hex(12)
    (root / "pw").write_text(password)
    as_user: list[str] = []
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        for path in (root, root / "pw"):
            os.chown(path, account.pw_uid, account.pw_gid)
        as_user = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}",
                   "--clear-groups", "--"]  # fmt: skip
    subprocess.run(
        [*as_user, _pg_tool("initdb"), "-D", str(root / "data"), "-U", "postgres",
         "--auth=scram-sha-256", f"--pwfile={root / 'pw'}", "-E", "UTF8", "--no-sync"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    port = _free_port()
    with (root / "postgres.log").open("wb") as log:
        process = subprocess.Popen(
            [*as_user, _pg_tool("postgres"), "-D", str(root / "data"), "-p", str(port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={root}",
             "-c", "fsync=off"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        ready = [_pg_tool("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)]
        while subprocess.run(ready, timeout=10).returncode != 0:
            assert process.poll() is None, (root / "postgres.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "postgres did not answer within 60s"
            time.sleep(0.2)
        yield Postgres(port, password)
    finally:
        stop_process(process)
        shutil.rmtree(root, ignore_errors=True)


def _database_role(stack: StackSettings, postgres: Postgres, role: str) -> None:
    """Mount the database engine (if needed), connect it to postgres, and create `role`."""
    root = root_client(stack)
    if "database/" not in root.sys.list_mounted_secrets_engines()["data"]:
        root.sys.enable_secrets_engine("database", path="database")
    root.secrets.database.configure(
        name=role,
        plugin_name="postgresql-database-plugin",
        allowed_roles=[role],
        connection_url=(
            f"postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{postgres.port}/postgres"
            "?sslmode=disable"
        ),
        username="postgres",
        password=postgres.password,
        mount_point="database",
    )
    root.secrets.database.create_role(
        role,
        db_name=role,
        creation_statements=[
            "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' "
            "VALID UNTIL '{{expiration}}';"
        ],
        default_ttl=TTL_S,
        max_ttl=MAX_TTL_S,
        mount_point="database",
    )


def _expire_time(stack: StackSettings, lease_id: str) -> str:
    return str(root_client(stack).sys.read_lease(lease_id)["data"]["expire_time"])


async def test_dynamic_credentials_are_renewed_replaced_and_recover_after_an_outage(
    test_stack, vault_stack, configured_vault, private_postgres, unique
) -> None:
    role = f"lakeward-{unique}"
    _database_role(vault_stack, private_postgres, role)
    refs = [f"vault:database/creds/{role}#username", f"vault:database/creds/{role}#password"]

    # One read: the username and the password of one lease, and they log in.
    user, password = resolve_many(refs)
    assert private_postgres.current_user(user, password) == user
    first = vault.shared_client().lease(refs[0])
    expires = _expire_time(vault_stack, first.lease_id)

    # Renewed at half the TTL: the expire time moves, the credentials stay.
    await eventually(
        lambda: _expire_time(vault_stack, first.lease_id) != expires, "a lease renewal"
    )
    assert first.renewals >= 1
    assert resolve_many(refs) == [user, password]

    # At max_ttl Vault extends no further: new credentials before the old ones expire.
    new_user, new_password = await eventually(
        lambda: (values := resolve_many(refs))[0] != user and values,
        "new credentials before max_ttl",
        timeout=MAX_TTL_S + 10,
    )
    assert time.time() < first.expires_at, "replaced only after the old lease expired"
    assert private_postgres.current_user(new_user, new_password) == new_user

    # OpenBao stops; the lease in hand expires meanwhile.
    server = next(s for s in test_stack.stack.servers if s.name == "vault")
    test_stack.stack.down([server])
    try:
        held = vault.shared_client().lease(refs[0])  # valid still: no Vault needed
        await eventually(lambda: time.time() > held.expires_at, "the lease to expire")
        with pytest.raises(SecretExpiredError) as expired:
            resolve_many(refs)
    finally:
        test_stack.need("vault")
    message = str(expired.value)
    assert f"vault:database/creds/{role}#" in message
    assert "the lease of these credentials expired at" in message and "UTC" in message
    assert f"Vault at {vault_stack.vault_address} does not answer" in message
    assert "check that Vault is up" in message
    assert expired.value.transient  # retried by the activities, not a failed pipeline
    for secret in (password, new_password, private_postgres.password):
        assert secret not in message

    # OpenBao is back (a dev server: in memory, so the engine is set up again): recovery.
    _database_role(vault_stack, private_postgres, role)
    again_user, again_password = await eventually(
        lambda: _try_resolve(refs), "credentials once OpenBao answers again"
    )
    assert again_user not in (user, new_user)
    assert private_postgres.current_user(again_user, again_password) == again_user


def _try_resolve(refs: list[str]) -> list[str] | None:
    with contextlib.suppress(SecretExpiredError):
        return resolve_many(refs)
    return None
