"""Secrets from Vault (OpenBao in the local stack): KV v2 versions and dynamic credentials.

A reference reads ``vault:<mount>/<path>#<key>``. A path whose second segment is ``creds``
(``vault:database/creds/lakeward-capture#password``) is a dynamic secret with a lease (the
database engine); every other path is a KV v2 secret (``vault:secret/lakeward/worker/mongo#uri``
reads ``secret/data/lakeward/worker/mongo``). The mount is the first segment: mounts whose name
holds a ``/`` are not supported.

KV v2 values are cached for ``vault_kv_cache_s`` seconds, so a new version is seen that long
after it is written, without a restart. Dynamic credentials are kept per path with their lease:
every key of one path comes from one read (username and password belong together), the lease is
renewed at ``vault_lease_renew_fraction`` of its TTL, and when Vault will not extend it further
(its max_ttl) new credentials are read before the old ones expire. A user of the credentials
notices a rotation because the resolved value changes (capture re-resolves its source on an
interval and reconnects; docs/secrets.md).

One client per process (`shared_client`), thread-safe: activities resolve from the I/O thread
pool and from the event loop at once. hvac is a sync driver; callers on the event loop run
resolution in a thread.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import hvac
import hvac.exceptions
import requests

from lakeward.settings import Settings, StackSettings

__all__ = [
    "Lease",
    "LeaseExpiredError",
    "VaultClient",
    "VaultReference",
    "VaultReferenceError",
    "VaultUnavailableError",
    "configure",
    "is_vault_reference",
    "shared_client",
]

_log = logging.getLogger("lakeward.vault")

PREFIX = "vault:"
#: How often the renewal thread looks at its leases and its login token.
_TICK_S = 0.5
#: A lease or token is replaced when less than this share of its TTL is left and Vault will
#: not extend it (at most this many seconds before it expires).
_REPLACE_MARGIN_S = 30.0


class VaultReferenceError(ValueError):
    """A vault: reference that cannot be resolved; names the reference and Vault's address,
    never a value. `transient`: Vault did not answer, and retrying may help."""

    transient = False


class VaultUnavailableError(VaultReferenceError):
    """Vault did not answer (down, sealed, unreachable); `reason` says how, briefly."""

    transient = True

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class LeaseExpiredError(VaultUnavailableError):
    """The lease of dynamic credentials expired and Vault did not answer for new ones."""


@dataclass(frozen=True)
class VaultReference:
    mount: str
    path: str
    key: str

    @classmethod
    def parse(cls, reference: str) -> VaultReference:
        body = reference.removeprefix(PREFIX)
        where, sep, key = body.partition("#")
        mount, slash, path = where.strip("/").partition("/")
        if not sep or not key or not slash or not path or not mount:
            raise VaultReferenceError(
                f"{reference!r} is not a vault reference; write vault:<mount>/<path>#<key>, "
                "e.g. vault:secret/lakeward/worker/mongo#password"
            )
        return cls(mount, path, key)

    @property
    def is_dynamic(self) -> bool:
        """A `creds/` path: dynamic credentials with a lease (database engine)."""
        return self.path.split("/", 1)[0] == "creds"

    @property
    def api_path(self) -> str:
        """The path the policy must grant `read` on."""
        if self.is_dynamic:
            return f"{self.mount}/{self.path}"
        return f"{self.mount}/data/{self.path}"

    def __str__(self) -> str:
        return f"{PREFIX}{self.mount}/{self.path}#{self.key}"


def is_vault_reference(value: str) -> bool:
    return value.startswith(PREFIX)


@dataclass
class Lease:
    """Dynamic credentials and their lease (times are epoch seconds)."""

    lease_id: str
    data: dict[str, Any] = field(repr=False)
    issued_at: float
    expires_at: float
    ttl_s: float
    renewable: bool
    #: Vault capped a renewal below the TTL asked for: the lease is at its max_ttl.
    at_max_ttl: bool = False
    renewals: int = 0

    def remaining(self, now: float) -> float:
        return self.expires_at - now


@dataclass
class _Kv:
    data: dict[str, Any] = field(repr=False)
    version: int
    read_at: float


class VaultClient:
    """A Vault/OpenBao client: token or AppRole login, KV v2 reads, leases kept fresh."""

    def __init__(
        self,
        address: str,
        *,
        token: Callable[[], str] | None = None,
        role_id: str | None = None,
        secret_id: Callable[[], str] | None = None,
        approle_mount: str = "approle",
        ca_file: str | None = None,
        timeout_s: float = 10.0,
        kv_cache_s: float = 5.0,
        renew_fraction: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if token is None and (role_id is None or secret_id is None):
            raise VaultReferenceError(
                f"no Vault authentication configured for {address}; set LAKEWARD_VAULT_TOKEN "
                "(a reference such as env:VAULT_TOKEN or file:/run/secrets/vault-token) or "
                "LAKEWARD_VAULT_ROLE_ID and LAKEWARD_VAULT_SECRET_ID (AppRole)"
            )
        self.address = address.rstrip("/")
        self._token_source = token
        self._role_id = role_id
        self._secret_id = secret_id
        self._approle_mount = approle_mount
        self._kv_cache_s = kv_cache_s
        self._fraction = renew_fraction
        self._clock = clock
        self._hvac = hvac.Client(url=self.address, verify=ca_file or True, timeout=timeout_s)
        self._lock = threading.RLock()
        self._kv: dict[tuple[str, str], _Kv] = {}
        self._leases: dict[tuple[str, str], Lease] = {}
        self._token_expires_at: float | None = None  # None: a token that does not expire
        self._token_ttl_s = 0.0
        self._token_renewable = False
        self._logged_in = False
        self._stopped = threading.Event()
        self._renewer: threading.Thread | None = None

    # -- public -----------------------------------------------------------------------------

    def resolve(self, reference: str) -> str:
        return self.resolve_many([reference])[0]

    def resolve_many(self, references: Iterable[str]) -> list[str]:
        """The values of the references; references to one path come from one read (one
        KV version, one lease), so a username and its password always belong together."""
        parsed = [VaultReference.parse(r) for r in references]
        secrets: dict[tuple[str, str], dict[str, Any]] = {}
        for ref in parsed:
            where = (ref.mount, ref.path)
            if where not in secrets:
                secrets[where] = self._lease(ref).data if ref.is_dynamic else self._kv_data(ref)
        return [self._value(ref, secrets[(ref.mount, ref.path)]) for ref in parsed]

    def _value(self, ref: VaultReference, data: dict[str, Any]) -> str:
        if ref.key not in data:
            # Key names are not secret; naming them shows a typo at once.
            keys = ", ".join(sorted(data)) or "none"
            raise VaultReferenceError(
                f"{ref}: the secret at {ref.api_path} in Vault at {self.address} has no key "
                f"{ref.key!r} (its keys: {keys}); fix the reference or add the key"
            )
        value = data[ref.key]
        return value if isinstance(value, str) else str(value)

    def lease(self, reference: str) -> Lease:
        """The lease currently held for a dynamic reference (read when none is)."""
        return self._lease(VaultReference.parse(reference))

    def close(self) -> None:
        self._stopped.set()
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join(5)
        self._hvac.adapter.close()

    # -- KV v2 ------------------------------------------------------------------------------

    def _kv_data(self, ref: VaultReference) -> dict[str, Any]:
        where = (ref.mount, ref.path)
        now = self._clock()
        with self._lock:
            cached = self._kv.get(where)
            if cached is not None and now - cached.read_at < self._kv_cache_s:
                return cached.data
            response = self._call(
                ref,
                lambda c: c.secrets.kv.v2.read_secret_version(
                    ref.path, mount_point=ref.mount, raise_on_deleted_version=True
                ),
            )
            body = response["data"]
            version = int(body.get("metadata", {}).get("version", 0))
            if cached is not None and cached.version != version:
                _log.info(
                    "secret has a new version",
                    extra={"path": ref.api_path, "version": version, "previous": cached.version},
                )
            self._kv[where] = _Kv(dict(body.get("data") or {}), version, now)
            return self._kv[where].data

    # -- dynamic credentials ----------------------------------------------------------------

    def _lease(self, ref: VaultReference) -> Lease:
        where = (ref.mount, ref.path)
        with self._lock:
            lease = self._leases.get(where)
            now = self._clock()
            if lease is not None and lease.remaining(now) > self._replace_margin(lease):
                return lease
            try:
                fresh = self._read_lease(ref)
            except VaultUnavailableError as exc:
                if lease is None:
                    raise
                if lease.remaining(now) > 0:
                    return lease  # still valid: use it while Vault is away
                expired = dt.datetime.fromtimestamp(lease.expires_at, dt.UTC)
                raise LeaseExpiredError(
                    f"{ref}: the lease of these credentials expired at "
                    f"{expired:%Y-%m-%d %H:%M:%S} UTC and Vault at {self.address} does not answer "
                    f"({exc.reason}); check that Vault is up, unsealed and reachable from this "
                    "process and that its token is still valid. Lakeward retries and recovers "
                    "once Vault answers"
                ) from None
            self._leases[where] = fresh
            if lease is not None:
                _log.info(
                    "dynamic credentials replaced",
                    extra={"path": ref.api_path, "expired": lease.remaining(now) <= 0},
                )
            self._start_renewer()
            return fresh

    def _read_lease(self, ref: VaultReference) -> Lease:
        response = self._call(ref, lambda c: c.read(ref.api_path))
        if not response:
            raise VaultReferenceError(
                f"{ref}: Vault at {self.address} has nothing at {ref.api_path}"
            )
        now = self._clock()
        ttl = float(response.get("lease_duration") or 0)
        return Lease(
            lease_id=response.get("lease_id", ""),
            data=dict(response.get("data") or {}),
            issued_at=now,
            expires_at=now + ttl if ttl else float("inf"),
            ttl_s=ttl,
            renewable=bool(response.get("renewable")),
        )

    def _replace_margin(self, lease: Lease) -> float:
        """Left time under which a lease Vault will not extend is replaced."""
        if lease.renewable and not lease.at_max_ttl:
            return 0.0
        return min(_REPLACE_MARGIN_S, (1 - self._fraction) * lease.ttl_s)

    def _renew_due(self, now: float) -> None:
        """Renew leases past the renew fraction of their TTL; replace those at their max_ttl."""
        with self._lock:
            due = list(self._leases.items())
        for (mount, path), lease in due:
            ref = VaultReference(mount, path, "")
            if lease.renewable and not lease.at_max_ttl:
                # Renewed once `fraction` of its TTL has passed since it was read or renewed.
                if lease.remaining(now) > (1 - self._fraction) * lease.ttl_s:
                    continue
                try:
                    self._renew(ref, lease)
                except VaultReferenceError as exc:
                    _log.warning("lease renewal failed", extra={"path": path, "error": str(exc)})
            elif lease.remaining(now) <= self._replace_margin(lease):
                try:
                    self._lease(ref)  # reads new credentials
                except VaultReferenceError as exc:
                    _log.warning(
                        "replacing credentials failed", extra={"path": path, "error": str(exc)}
                    )

    def _renew(self, ref: VaultReference, lease: Lease) -> None:
        increment = int(lease.ttl_s)
        response = self._call(
            ref, lambda c: c.sys.renew_lease(lease_id=lease.lease_id, increment=increment)
        )
        now = self._clock()
        granted = float(response.get("lease_duration") or 0)
        with self._lock:
            lease.expires_at = now + granted
            lease.renewals += 1
            # Vault caps a renewal at the lease's max_ttl: once it gives less than asked, the
            # lease ends there, and new credentials are read before then.
            lease.at_max_ttl = granted < increment
        _log.info(
            "lease renewed",
            extra={"path": ref.api_path, "ttl_s": granted, "at_max_ttl": lease.at_max_ttl},
        )

    def _start_renewer(self) -> None:
        if self._renewer is None or not self._renewer.is_alive():
            self._renewer = threading.Thread(
                target=self._renew_loop, name="vault-leases", daemon=True
            )
            self._renewer.start()

    def _renew_loop(self) -> None:
        while not self._stopped.wait(_TICK_S):
            try:
                self._renew_due(self._clock())
                self._refresh_login()
            except Exception as exc:  # the thread must outlive any one failure
                _log.warning("vault renewal round failed: %s", type(exc).__name__)

    # -- authentication ---------------------------------------------------------------------

    def _ensure_login(self) -> None:
        if not self._logged_in:
            self._login()
            return
        self._refresh_login()

    def _login(self) -> None:
        with self._lock:
            if self._token_source is not None:
                self._hvac.token = self._token_source()
                self._token_expires_at = None
                self._logged_in = True
                return
            assert self._role_id is not None and self._secret_id is not None
            try:
                auth = self._hvac.auth.approle.login(
                    self._role_id, self._secret_id(), mount_point=self._approle_mount
                )["auth"]
            except hvac.exceptions.VaultError as exc:
                raise VaultReferenceError(
                    f"AppRole login at {self.address}/v1/auth/{self._approle_mount}/login was "
                    f"refused (HTTP {_status(exc)}); check LAKEWARD_VAULT_ROLE_ID and the secret "
                    "id LAKEWARD_VAULT_SECRET_ID refers to (docker/vault/README.md)"
                ) from None
            except requests.RequestException as exc:
                raise VaultUnavailableError(
                    f"Vault at {self.address} does not answer the AppRole login "
                    f"({type(exc).__name__}); check that it is up and reachable",
                    type(exc).__name__,
                ) from None
            self._token_ttl_s = float(auth.get("lease_duration") or 0)
            self._token_renewable = bool(auth.get("renewable"))
            self._token_expires_at = (
                self._clock() + self._token_ttl_s if self._token_ttl_s else None
            )
            self._logged_in = True
            self._start_renewer()

    def _refresh_login(self) -> None:
        """Renew an AppRole token past the renew fraction; log in again when it cannot be."""
        with self._lock:
            expires = self._token_expires_at
            if expires is None or not self._logged_in:
                return
            now = self._clock()
            if expires - now > (1 - self._fraction) * self._token_ttl_s:
                return
            if self._token_renewable:
                try:
                    auth = self._hvac.auth.token.renew_self()["auth"]
                    granted = float(auth.get("lease_duration") or 0)
                    self._token_expires_at = now + granted
                    if granted >= self._token_ttl_s * (1 - self._fraction) + 1:
                        return
                except (hvac.exceptions.VaultError, requests.RequestException):
                    pass  # log in again below
            self._logged_in = False
            self._login()

    # -- requests ---------------------------------------------------------------------------

    def _call(self, ref: VaultReference, request: Callable[[hvac.Client], Any]) -> Any:
        """One request, with the errors translated: the message names the reference, Vault's
        address and what to do; never a value, and never the driver's text (`from None`)."""
        try:
            self._ensure_login()
        except VaultUnavailableError as exc:
            raise VaultUnavailableError(f"{ref}: {exc}", exc.reason) from None
        except VaultReferenceError as exc:
            raise VaultReferenceError(f"{ref}: {exc}") from None
        try:
            return request(self._hvac)
        except hvac.exceptions.Forbidden:
            raise VaultReferenceError(
                f"{ref}: Vault at {self.address} denied reading {ref.api_path}; the token's "
                f'policy needs path "{ref.api_path}" {{ capabilities = ["read"] }} '
                "(docker/vault/worker.hcl or api.hcl), or the token itself is invalid or expired"
            ) from None
        except hvac.exceptions.InvalidPath:
            what = "no credentials role" if ref.is_dynamic else "no secret (or it was deleted)"
            raise VaultReferenceError(
                f"{ref}: Vault at {self.address} has {what} at {ref.api_path}; write it, or fix "
                "the reference's mount and path"
            ) from None
        except (hvac.exceptions.VaultDown, hvac.exceptions.BadGateway) as exc:
            raise _unavailable(ref, self.address, f"HTTP {_status(exc)}, sealed or down") from None
        except hvac.exceptions.VaultError as exc:
            error: type[VaultReferenceError] = VaultReferenceError
            if isinstance(
                exc, hvac.exceptions.InternalServerError | hvac.exceptions.RateLimitExceeded
            ):
                error = VaultUnavailableError
            raise error(
                f"{ref}: Vault at {self.address} refused reading {ref.api_path} "
                f"(HTTP {_status(exc)})"
            ) from None
        except requests.exceptions.SSLError:
            raise VaultReferenceError(
                f"{ref}: the TLS handshake with Vault at {self.address} failed; if its "
                "certificate is signed by a private CA, set LAKEWARD_VAULT_CA_FILE to that CA"
            ) from None
        except requests.RequestException as exc:
            raise _unavailable(ref, self.address, type(exc).__name__) from None


def _unavailable(ref: VaultReference, address: str, reason: str) -> VaultUnavailableError:
    return VaultUnavailableError(
        f"{ref}: Vault at {address} does not answer ({reason}); check that it is up, unsealed "
        "and reachable from this process",
        reason,
    )


def _status(exc: hvac.exceptions.VaultError) -> str:
    return str(getattr(exc, "status_code", None) or "?")


# -- one client per process --------------------------------------------------------------------

_shared: VaultClient | None = None
_shared_settings: Settings | None = None
_shared_lock = threading.Lock()


def configure(settings: Settings) -> None:
    """Use these settings for the process's client (a worker or the API calls this at start);
    a client made from other settings is closed."""
    global _shared, _shared_settings
    with _shared_lock:
        if _shared is not None:
            _shared.close()
        _shared, _shared_settings = None, settings


def shared_client() -> VaultClient:
    """The process's client, made on first use from the configured settings (else from the
    environment)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = _client_from(_shared_settings or Settings())
        return _shared


def _client_from(settings: Settings) -> VaultClient:
    # Imported here: lakeward.secrets resolves env:/file: and calls this module for vault:.
    from lakeward.secrets import resolve_local

    token = settings.vault_token
    secret_id = settings.vault_secret_id
    token_ref = None if token is None else token.get_secret_value()
    if token_ref is None and settings.vault_role_id is None:
        # The embedded default: the local stack's OpenBao and the root token it generated.
        stack_token = StackSettings().stack_dir / "secrets" / "vault-token"
        if stack_token.exists():
            token_ref = f"file:{stack_token.resolve()}"
    return VaultClient(
        settings.vault_address,
        token=None if token_ref is None else (lambda: resolve_local(token_ref)),
        role_id=settings.vault_role_id,
        secret_id=None
        if secret_id is None
        else (lambda: resolve_local(secret_id.get_secret_value())),
        approle_mount=settings.vault_approle_mount,
        ca_file=None if settings.vault_ca_file is None else str(settings.vault_ca_file),
        timeout_s=settings.vault_timeout_s,
        kv_cache_s=settings.vault_kv_cache_s,
        renew_fraction=settings.vault_lease_renew_fraction,
    )
