"""Shared by the Vault tests: the stack's OpenBao, a root client to arrange secrets and
policies with, and worker settings that read through it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import pytest
from pydantic import SecretStr

from lakeward import vault
from lakeward.settings import Settings, StackSettings
from lakeward.stack.servers_extra import vault_token

REPO = Path(__file__).resolve().parent.parent
POLICIES = REPO / "docker" / "vault"


def token_file(stack: StackSettings) -> Path:
    return stack.stack_dir.resolve() / "secrets" / "vault-token"


def root_client(stack: StackSettings) -> hvac.Client:
    return hvac.Client(url=stack.vault_address, token=vault_token(stack))


def vault_settings(stack: StackSettings, **overrides: Any) -> Settings:
    """Settings that authenticate with the dev server's root token, given by reference."""
    values: dict[str, Any] = {
        "vault_address": stack.vault_address,
        "vault_token": SecretStr(f"file:{token_file(stack)}"),
        "vault_kv_cache_s": 0.5,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def vault_stack(test_stack: Any) -> StackSettings:
    return test_stack.need("vault")


@pytest.fixture
def configured_vault(vault_stack: StackSettings) -> Iterator[Settings]:
    """The process's Vault client reads the test stack's OpenBao for the test."""
    settings = vault_settings(vault_stack)
    vault.configure(settings)
    try:
        yield settings
    finally:
        vault.configure(Settings())


def put_kv(stack: StackSettings, path: str, **data: str) -> int:
    """Write a new version of secret/<path>; returns the version number."""
    response = root_client(stack).secrets.kv.v2.create_or_update_secret(
        path, secret=data, mount_point="secret"
    )
    return int(response["data"]["version"])


def install_policies(stack: StackSettings) -> None:
    """The worker's and the API's policies from docker/vault/, as an operator installs them."""
    root = root_client(stack)
    for name in ("worker", "api"):
        root.sys.create_or_update_policy(f"lakeward-{name}", (POLICIES / f"{name}.hcl").read_text())
