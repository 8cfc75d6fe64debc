"""Bearer-token authentication and roles.

`admin` may do everything, `operator` may create pipelines and pause, resume, re-snapshot and
reconcile them, `viewer` may read. A missing, unknown or revoked token is a 401; a known token
whose role is too small is a 403. Health, readiness and metrics need no token.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import Problem
from lakeward.secrets import SecretReferenceError, is_reference, resolve
from lakeward.settings import Settings
from lakeward.tokens import BOOTSTRAP_ADMIN, Role, TokenStore, ensure_admin_token, hash_token

__all__ = ["BEARER", "Authenticator", "Identity", "require"]

#: The OpenAPI security scheme; auto_error off so a missing token is our own problem+json 401.
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="A Lakeward API token: LAKEWARD_ADMIN_TOKEN, .lakeward/admin-token, or one "
    "made by `lakeward token create --role viewer|operator|admin --name NAME`.",
)

_CREDENTIALS = Security(BEARER)


@dataclass(frozen=True)
class Identity:
    name: str
    role: Role


class Authenticator:
    """Knows the bootstrap admin token (its hash only) and the token file.

    `LAKEWARD_ADMIN_TOKEN` may be a secret reference (`vault:`, `env:`, `file:`); it is
    resolved at each authentication, so a new version written to Vault takes effect without a
    restart (lakeward/secrets.py caches what it reads).
    """

    def __init__(self, settings: Settings) -> None:
        configured = settings.admin_token.get_secret_value() if settings.admin_token else ""
        self._admin_reference = configured if is_reference(configured) else None
        if self._admin_reference is None:
            admin = configured or ensure_admin_token(settings.admin_token_file)
            self._admin_sha256: str | None = hash_token(admin)
        self.store = TokenStore(settings.api_tokens_file)

    def _admin_hash(self) -> str:
        if self._admin_reference is None:
            assert self._admin_sha256 is not None
            return self._admin_sha256
        try:
            return hash_token(resolve(self._admin_reference))
        except SecretReferenceError as exc:
            raise Problem(503, "Admin token unavailable", f"LAKEWARD_ADMIN_TOKEN: {exc}") from None

    def identify(self, token: str) -> Identity | None:
        record = self.store.identify(token)
        if record is not None:
            return Identity(record.name, record.role)
        if hmac.compare_digest(hash_token(token), self._admin_hash()):
            return Identity(BOOTSTRAP_ADMIN, Role.admin)
        return None


def _unauthorized(detail: str) -> Problem:
    return Problem(401, "Unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


def require(role: Role) -> Callable[..., Awaitable[Identity]]:
    """A dependency that lets through tokens whose role includes `role`."""

    async def authorize(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = _CREDENTIALS,
    ) -> Identity:
        if credentials is None:
            raise _unauthorized("send a token: Authorization: Bearer <token>")
        authenticator: Authenticator = request.app.state.authenticator
        identity = authenticator.identify(credentials.credentials)
        if identity is None:
            raise _unauthorized("the token is unknown or revoked")
        request.state.identity = identity
        if not identity.role.allows(role):
            raise Problem(
                403,
                "Forbidden",
                f"token {identity.name!r} has role {identity.role.value}; "
                f"this needs {role.value} or above",
            )
        return identity

    authorize.__name__ = f"require_{role.value}"
    return authorize
