"""How a process reaches Temporal: address, namespace, TLS material and API key from the settings.

The engine knows nothing of temporalio, so this reads and checks the material (certificate files,
the key through a secret reference, the API key) into plain bytes and strings; `api.temporal`
turns it into `Client.connect` arguments for every client (worker, API). Nothing here is logged:
`describe()` is what an error may say.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lakeward.secrets import resolve
from lakeward.settings import Settings
from workflows.spec import SECRET_REFERENCE_PREFIXES

__all__ = ["TemporalConfigError", "TemporalConnection", "TemporalTLS", "temporal_connection"]


class TemporalConfigError(ValueError):
    """The Temporal TLS settings are incomplete or unreadable; the message names the setting."""


@dataclass(frozen=True)
class TemporalTLS:
    """PEM bytes for the client's TLS; None: the system's roots / no client certificate."""

    server_root_ca_cert: bytes | None = None
    client_cert: bytes | None = None
    client_private_key: bytes | None = field(default=None, repr=False)
    domain: str | None = None


@dataclass(frozen=True)
class TemporalConnection:
    address: str
    namespace: str
    tls: TemporalTLS | None = None
    api_key: str | None = field(default=None, repr=False)

    def describe(self) -> str:
        """Address, namespace and how the client authenticates; never key material."""
        how = "plaintext"
        if self.tls is not None:
            how = "mTLS" if self.tls.client_cert else "TLS"
        if self.api_key:
            how += " with an API key"
        return f"Temporal at {self.address} (namespace {self.namespace!r}, {how})"


def _read(path: Path | None, setting: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TemporalConfigError(
            f"cannot read {setting} ({path}): {exc.strerror}; fix LAKEWARD_{setting.upper()}"
        ) from exc


def _key(value: str | None) -> bytes | None:
    """The client key: a secret reference to the PEM text, or a path to the PEM file."""
    if value is None:
        return None
    if value.startswith(SECRET_REFERENCE_PREFIXES):
        # file: strips the trailing newline; PEM parsers want the END line terminated.
        return resolve(value).encode() + b"\n"
    return _read(Path(value), "temporal_tls_key_file")


def temporal_connection(settings: Settings) -> TemporalConnection:
    """The settings' connection, with certificate files read and the key and API key resolved.

    Raises TemporalConfigError (or SecretReferenceError) naming what is missing or unreadable.
    """
    api_key = settings.temporal_api_key
    resolved_api_key = resolve(api_key.get_secret_value()) if api_key is not None else None
    files = (
        settings.temporal_tls_ca_file,
        settings.temporal_tls_cert_file,
        settings.temporal_tls_key_file,
        settings.temporal_tls_server_name,
    )
    # An API key (Temporal Cloud) travels in a header: only ever over TLS.
    wants_tls = settings.temporal_tls or resolved_api_key is not None
    if not wants_tls:
        if any(f is not None for f in files):
            raise TemporalConfigError(
                "LAKEWARD_TEMPORAL_TLS_* files are set but LAKEWARD_TEMPORAL_TLS is off; turn "
                "it on, or unset them"
            )
        return TemporalConnection(settings.temporal_address, settings.temporal_namespace)
    if (settings.temporal_tls_cert_file is None) != (settings.temporal_tls_key_file is None):
        raise TemporalConfigError(
            "mTLS needs both LAKEWARD_TEMPORAL_TLS_CERT_FILE and LAKEWARD_TEMPORAL_TLS_KEY_FILE "
            "(only one is set)"
        )
    tls = TemporalTLS(
        server_root_ca_cert=_read(settings.temporal_tls_ca_file, "temporal_tls_ca_file"),
        client_cert=_read(settings.temporal_tls_cert_file, "temporal_tls_cert_file"),
        client_private_key=_key(settings.temporal_tls_key_file),
        domain=settings.temporal_tls_server_name,
    )
    return TemporalConnection(
        settings.temporal_address, settings.temporal_namespace, tls, resolved_api_key
    )
