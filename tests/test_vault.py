"""vault: references against the stack's real OpenBao: KV v2 versions, AppRole logins under
the policies of docker/vault/, and errors that name the reference but never a value."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import hvac
import pytest
from pydantic import ValidationError

from lakeward.credentials import merge_credentials, source_uri
from lakeward.secrets import SecretReferenceError, resolve, resolve_local
from lakeward.stack.servers import venv_bin
from lakeward.vault import VaultClient, VaultReferenceError
from tests.test_capture_faults import _free_port
from tests.test_capture_strategies import eventually
from tests.vault_helpers import (
    configured_vault,
    install_policies,
    put_kv,
    root_client,
    vault_stack,
)
from workflows.spec import PipelineSpec

__all__ = ["configured_vault", "vault_stack"]  # fixtures


# -- KV v2 ----------------------------------------------------------------------------------------


async def test_kv_reference_resolves_and_a_new_version_is_picked_up_without_restart(
    vault_stack, configured_vault, unique
) -> None:
    path = f"lakeward/worker/kv-{unique}"
    put_kv(vault_stack, path, uri="mongodb://first:27017/", password="one")
    assert resolve(f"vault:secret/{path}#uri") == "mongodb://first:27017/"

    assert put_kv(vault_stack, path, uri="mongodb://second:27017/", password="two") == 2
    # Same process, same client: the new version shows once the short cache has lapsed.
    await eventually(
        lambda: resolve(f"vault:secret/{path}#uri") == "mongodb://second:27017/",
        "the new KV version",
    )


async def test_source_credentials_come_from_one_version_and_are_url_encoded(
    vault_stack, configured_vault, unique
) -> None:
    path = f"lakeward/worker/src-{unique}"
    put_kv(vault_stack, path, username="cap@ture", password="p:a/ss%")
    spec = PipelineSpec.model_validate(
        {
            "name": f"src-{unique}",
            "source": {
                "uri": "mongodb://127.0.0.1:27017/?replicaSet=rs0",
                "database": "shop",
                "username": f"vault:secret/{path}#username",
                "password": f"vault:secret/{path}#password",
            },
        }
    )
    assert source_uri(spec.source) == (
        "mongodb://cap%40ture:p%3Aa%2Fss%25@127.0.0.1:27017/?replicaSet=rs0"
    )


def test_spec_refuses_a_plain_password_and_a_user_in_two_places() -> None:
    base = {"uri": "mongodb://h:27017/", "database": "shop"}
    with pytest.raises(ValidationError, match="must be a secret reference") as plain:
        PipelineSpec.model_validate(
            {"name": "p", "source": {**base, "username": "u", "password": "hunter2"}}
        )
    # What the API returns (errors without their input) never holds the value.
    assert "hunter2" not in str(plain.value.errors(include_input=False))
    with pytest.raises(ValidationError, match="keep the user in one place"):
        PipelineSpec.model_validate(
            {"name": "p", "source": {**base, "uri": "mongodb://a@h/", "username": "env:U"}}
        )
    with pytest.raises(ValidationError, match=r"password needs source\.username"):
        PipelineSpec.model_validate({"name": "p", "source": {**base, "password": "env:P"}})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        PipelineSpec.model_validate({"name": "p", "source": {**base, "pasword": "env:P"}})
    assert merge_credentials("mongodb+srv://c.example.net/db", "u", None) == (
        "mongodb+srv://u@c.example.net/db"
    )


# -- AppRole and the policies ---------------------------------------------------------------------


def _approle(vault_stack, role: str, policy: str, **options) -> tuple[str, str]:
    root = root_client(vault_stack)
    if "approle/" not in root.sys.list_auth_methods()["data"]:
        root.sys.enable_auth_method("approle")
    root.auth.approle.create_or_update_approle(role, token_policies=[policy], **options)
    role_id = root.auth.approle.read_role_id(role)["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id(role)["data"]["secret_id"]
    return role_id, secret_id


async def test_approle_worker_reads_its_paths_and_is_denied_the_apis(
    vault_stack, unique, monkeypatch
) -> None:
    install_policies(vault_stack)
    worker_secret, api_secret = secrets.token_hex(8), secrets.token_hex(8)
    put_kv(vault_stack, f"lakeward/worker/app-{unique}", password=worker_secret)
    put_kv(vault_stack, f"lakeward/api/app-{unique}", password=api_secret)
    # A login token that lives 2 s and can be renewed for 4 s at most: past that only a new
    # login keeps the worker reading.
    role_id, secret_id = _approle(
        vault_stack, f"worker-{unique}", "lakeward-worker", token_ttl="2s", token_max_ttl="4s"
    )
    monkeypatch.setenv(f"SECRET_ID_{unique}", secret_id)

    worker = VaultClient(
        vault_stack.vault_address,
        role_id=role_id,
        secret_id=lambda: resolve_local(f"env:SECRET_ID_{unique}"),
        kv_cache_s=0,
    )
    try:
        began = time.monotonic()
        while time.monotonic() - began < 6:  # past the token's max TTL
            value = worker.resolve(f"vault:secret/lakeward/worker/app-{unique}#password")
            assert value == worker_secret
            await asyncio.sleep(0.25)
        with pytest.raises(VaultReferenceError) as denied:
            worker.resolve(f"vault:secret/lakeward/api/app-{unique}#password")
        with pytest.raises(VaultReferenceError) as no_creds:
            worker.resolve("vault:database/creds/other-role#password")
    finally:
        worker.close()
    message = str(denied.value)
    assert f"vault:secret/lakeward/api/app-{unique}#password" in message
    assert f"denied reading secret/data/lakeward/api/app-{unique}" in message
    assert vault_stack.vault_address in message
    assert api_secret not in message and worker_secret not in message
    assert "denied reading database/creds/other-role" in str(no_creds.value)

    role_id, secret_id = _approle(vault_stack, f"api-{unique}", "lakeward-api")
    api = VaultClient(vault_stack.vault_address, role_id=role_id, secret_id=lambda: secret_id)
    try:
        assert api.resolve(f"vault:secret/lakeward/api/app-{unique}#password") == api_secret
        with pytest.raises(VaultReferenceError, match="denied reading secret/data/lakeward/worker"):
            api.resolve(f"vault:secret/lakeward/worker/app-{unique}#password")
    finally:
        api.close()


async def test_a_wrong_secret_id_is_a_clear_error(vault_stack, unique) -> None:
    role_id, _ = _approle(vault_stack, f"wrong-{unique}", "lakeward-worker")
    client = VaultClient(vault_stack.vault_address, role_id=role_id, secret_id=lambda: "nope")
    with pytest.raises(VaultReferenceError, match=r"#y: AppRole login at .* was refused"):
        client.resolve("vault:secret/lakeward/worker/x#y")


# -- errors ---------------------------------------------------------------------------------------


async def test_errors_name_the_reference_and_vault_never_the_value(
    vault_stack, configured_vault, unique
) -> None:
    value = secrets.token_hex(12)
    path = f"lakeward/worker/err-{unique}"
    put_kv(vault_stack, path, password=value, username="capture")

    with pytest.raises(SecretReferenceError) as missing_key:
        resolve(f"vault:secret/{path}#pasword")
    message = str(missing_key.value)
    assert f"vault:secret/{path}#pasword" in message and vault_stack.vault_address in message
    assert "its keys: password, username" in message  # names, never values
    assert not missing_key.value.transient

    with pytest.raises(SecretReferenceError) as missing_path:
        resolve(f"vault:secret/{path}-typo#password")
    assert "no secret (or it was deleted)" in str(missing_path.value)

    unreachable = VaultClient("http://127.0.0.1:9", token=lambda: value)  # discard port
    with pytest.raises(VaultReferenceError) as down:
        unreachable.resolve(f"vault:secret/{path}#password")
    assert down.value.transient
    assert "Vault at http://127.0.0.1:9 does not answer" in str(down.value)

    for error in (missing_key.value, missing_path.value, down.value):
        assert value not in str(error) and value not in repr(error)
        assert error.__cause__ is None  # no driver text chained behind the message


# -- https with a private CA ---------------------------------------------------------------------


@pytest.fixture
def tls_openbao(tmp_path) -> Iterator[tuple[str, Path, str]]:
    """A second OpenBao dev server of the test's own, serving https with a CA it generates."""
    port = _free_port()
    certs = tmp_path / "certs"
    certs.mkdir()
    token = secrets.token_hex(16)
    with (tmp_path / "bao.log").open("wb") as log:
        process = subprocess.Popen(
            [str(venv_bin("bao")), "server", "-dev", "-dev-tls", f"-dev-tls-cert-dir={certs}",
             f"-dev-listen-address=127.0.0.1:{port}", "-dev-no-store-token"],
            env={**os.environ, "BAO_DEV_ROOT_TOKEN_ID": token}, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    address, ca = f"https://127.0.0.1:{port}", certs / "vault-ca.pem"
    try:
        root = hvac.Client(url=address, token=token, verify=str(ca))
        deadline = time.monotonic() + 30
        while not (ca.exists() and _answers(root)):
            assert process.poll() is None, (tmp_path / "bao.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the TLS OpenBao did not answer within 30s"
            time.sleep(0.1)
        root.secrets.kv.v2.create_or_update_secret(
            "lakeward/worker/tls", secret={"password": "over-tls"}, mount_point="secret"
        )
        yield address, ca, token
    finally:
        process.terminate()  # our own process, by its handle
        process.wait(30)


def _answers(client: hvac.Client) -> bool:
    try:
        return bool(client.sys.read_health_status(method="GET"))
    except Exception:
        return False


def test_https_vault_with_a_private_ca_needs_the_ca_file(tls_openbao) -> None:
    address, ca, token = tls_openbao
    reference = "vault:secret/lakeward/worker/tls#password"
    trusting = VaultClient(address, token=lambda: token, ca_file=str(ca))
    assert trusting.resolve(reference) == "over-tls"
    untrusting = VaultClient(address, token=lambda: token)
    with pytest.raises(VaultReferenceError, match="LAKEWARD_VAULT_CA_FILE") as refused:
        untrusting.resolve(reference)
    assert not refused.value.transient and "over-tls" not in str(refused.value)
