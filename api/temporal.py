"""Every Temporal client of Lakeward (worker, API) connects through `connect_client`: address,
namespace, TLS / mTLS and the Temporal Cloud API key from the settings (docs/transport-security.md).

It lives in `api/` because both the API and the workers (the composition root) may import it;
the material itself is read and checked by the engine (`lakeward.temporal_connection`).
"""

from __future__ import annotations

from typing import Any

from temporalio.client import Client
from temporalio.service import TLSConfig

from lakeward.settings import Settings
from lakeward.temporal_connection import TemporalConnection, temporal_connection

__all__ = ["TemporalConnectError", "connect_client", "connect_options"]


class TemporalConnectError(RuntimeError):
    """The client could not reach Temporal; the message says where, how, and what to check."""


def connect_options(connection: TemporalConnection) -> dict[str, Any]:
    """`Client.connect` keyword arguments (besides the address) for `connection`."""
    tls: bool | TLSConfig = False
    if connection.tls is not None:
        t = connection.tls
        tls = TLSConfig(
            server_root_ca_cert=t.server_root_ca_cert,
            domain=t.domain,
            client_cert=t.client_cert,
            client_private_key=t.client_private_key,
        )
    return {"namespace": connection.namespace, "tls": tls, "api_key": connection.api_key}


_HINT_TLS = (
    "check LAKEWARD_TEMPORAL_TLS_CA_FILE (the CA of the frontend's certificate), "
    "LAKEWARD_TEMPORAL_TLS_SERVER_NAME (a name on that certificate), the client certificate and "
    "key (LAKEWARD_TEMPORAL_TLS_CERT_FILE, LAKEWARD_TEMPORAL_TLS_KEY_FILE), and that the "
    "frontend serves TLS on this port"
)
_HINT_PLAIN = (
    "if the frontend requires TLS (Temporal Cloud, or a cluster with mTLS), set "
    "LAKEWARD_TEMPORAL_TLS=true and its certificate settings"
)


async def connect_client(settings: Settings, **options: Any) -> Client:
    """A client for the settings' Temporal; `options` (data converter, interceptors, runtime)
    go to `Client.connect` as they are.

    Raises TemporalConfigError for incomplete settings and TemporalConnectError, naming the
    settings to check, when the frontend refuses or cannot be reached.
    """
    connection = temporal_connection(settings)
    try:
        return await Client.connect(connection.address, **connect_options(connection), **options)
    except RuntimeError as exc:
        # The core's text names the transport error; it never holds the key or the API key.
        hint = _HINT_TLS if connection.tls is not None else _HINT_PLAIN
        raise TemporalConnectError(
            f"cannot connect to {connection.describe()}: {exc}; {hint}"
        ) from None
