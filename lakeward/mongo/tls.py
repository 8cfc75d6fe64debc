"""TLS towards a pipeline's source: the options of the spec's `source.tls`, or of the worker's
settings when the spec has none, written into the connection string every MongoClient of the
source dials (`lakeward.credentials.source_uri` calls `with_tls` last), and the clear error for a
failed TLS handshake.

Options go into the URI rather than client keyword arguments so that every reader, admin call
and breaker that already takes the URI gets TLS with no change of its own. The result may hold
a password (the URI's or the key's): pass it to a client, never to a log or an error
(`hosts_of` and `lakeward.logs.redact` make safe names of it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit, urlunsplit

from pymongo.errors import ConnectionFailure

from lakeward.mongo.clients import hosts_of
from lakeward.mongo.errors import CaptureSourceError
from lakeward.secrets import resolve
from lakeward.settings import Settings
from workflows.spec import SourceTLS

__all__ = [
    "MongoTLS",
    "TransportSecurityError",
    "explained_tls_failures",
    "mongo_tls",
    "tls_failure",
    "with_tls",
]


@dataclass(frozen=True)
class MongoTLS:
    """Effective TLS options; the key password stays a reference until `with_tls`."""

    ca_file: str | None = None
    certificate_key_file: str | None = None
    certificate_key_password: str | None = field(default=None, repr=False)
    allow_invalid_hostnames: bool = False


def mongo_tls(tls: SourceTLS | None, settings: Settings | None) -> MongoTLS | None:
    """The spec's TLS options when it has them, else the worker's settings; None: TLS is left
    to the URI (off unless it says tls=true or is mongodb+srv://)."""
    if tls is not None:
        if not tls.enabled:
            return None
        return MongoTLS(
            tls.ca_file, tls.certificate_key_file, tls.certificate_key_password,
            tls.allow_invalid_hostnames,
        )  # fmt: skip
    if settings is None or not settings.mongo_tls:
        return None
    password = settings.mongo_tls_certificate_key_password
    return MongoTLS(
        ca_file=str(settings.mongo_tls_ca_file) if settings.mongo_tls_ca_file else None,
        certificate_key_file=(
            str(settings.mongo_tls_certificate_key_file)
            if settings.mongo_tls_certificate_key_file
            else None
        ),
        certificate_key_password=password.get_secret_value() if password else None,
        allow_invalid_hostnames=settings.mongo_tls_allow_invalid_hostnames,
    )


def with_tls(uri: str, tls: MongoTLS | None) -> str:
    """`uri` with the TLS options set in its query string (replacing the same options, any
    letter case, already there). The key password is resolved here."""
    if tls is None:
        return uri
    wanted: dict[str, str] = {"tls": "true"}
    if tls.ca_file:
        wanted["tlsCAFile"] = tls.ca_file
    if tls.certificate_key_file:
        wanted["tlsCertificateKeyFile"] = tls.certificate_key_file
    if tls.certificate_key_password is not None:
        wanted["tlsCertificateKeyFilePassword"] = resolve(tls.certificate_key_password)
    if tls.allow_invalid_hostnames:
        wanted["tlsAllowInvalidHostnames"] = "true"
    parts = urlsplit(uri)
    replaced = {k.lower() for k in wanted} | {"ssl"}  # ssl= is tls='s old name
    # The URI's own options are kept byte for byte (no decode and re-encode of their values).
    kept = [
        pair
        for pair in parts.query.replace(";", "&").split("&")
        if pair and pair.partition("=")[0].lower() not in replaced
    ]
    added = [f"{k}={quote(v, safe='')}" for k, v in wanted.items()]
    query = "&".join([*kept, *added])
    # A URI with hosts but no path ("mongodb://h:1?x") needs the "/" before its options.
    path = parts.path or "/"
    return urlunsplit((parts.scheme, parts.netloc, path, query, parts.fragment))


class TransportSecurityError(CaptureSourceError):
    """The TLS handshake with the source failed for a reason retrying cannot change (an
    untrusted or misnamed certificate, a missing client certificate); the message names the
    setting to fix."""


#: What the TLS layer says (in pymongo's error text) -> the fix, most specific first.
_TLS_FAILURES = (
    (
        ("hostname mismatch", "doesn't match", "does not match"),
        "the server's certificate does not name the host in the URI; connect by a name the "
        "certificate carries, or (weaker) set source.tls.allow_invalid_hostnames",
    ),
    (
        ("certificate verify failed", "certificate_verify_failed"),
        "the server's certificate is not signed by a CA the worker trusts; set source.tls."
        "ca_file (or LAKEWARD_MONGO_TLS_CA_FILE, or tlsCAFile in the URI) to the PEM file of "
        "the CA that signed it",
    ),
    (
        ("certificate required", "peer did not return a certificate", "no certificate returned"),
        "the server requires a client certificate; set source.tls.certificate_key_file (or "
        "LAKEWARD_MONGO_TLS_CERTIFICATE_KEY_FILE) to a PEM file with the client's certificate "
        "and key",
    ),
    (
        ("wrong_version_number", "wrong version number", "unknown protocol"),
        "the server does not speak TLS on this port; remove tls from the URI and source.tls, "
        "or point the URI at the server's TLS port",
    ),
)


#: With TLS 1.3 a server refuses a missing client certificate after the handshake: the
#: client only sees the connection closed (pymongo words it differently depending on when it
#: notices: "connection is already closed", "connection closed", a reset).
_NO_CLIENT_CERTIFICATE = (
    "the server closed the TLS connection and the client sent no certificate; if it requires "
    "client certificates (mongod --tlsCAFile without --tlsAllowConnectionsWithoutCertificates), "
    "set source.tls.certificate_key_file (or LAKEWARD_MONGO_TLS_CERTIFICATE_KEY_FILE)"
)


def _options(uri: str) -> dict[str, str]:
    pairs = (p.partition("=") for p in urlsplit(uri).query.replace(";", "&").split("&") if p)
    return {key.lower(): value.lower() for key, _, value in pairs}


def tls_failure(exc: BaseException, uri: str) -> TransportSecurityError | None:
    """The clear error for a connection that failed in its TLS handshake, else None (the
    failure may be transient: the driver's own error stands)."""
    if not isinstance(exc, ConnectionFailure):
        return None
    text = str(exc).lower()
    detail = str(exc).split(" (configured timeouts")[0].split(", Timeout:")[0][:300]
    for needles, fix in _TLS_FAILURES:
        if any(n in text for n in needles):
            return TransportSecurityError(
                f"TLS handshake with MongoDB at {hosts_of(uri)} failed ({detail}): {fix}"
            )
    options = _options(uri)
    tls_on = uri.startswith("mongodb+srv://") or "true" in (options.get("tls"), options.get("ssl"))
    closed = ("connection is already closed", "connection closed", "connection reset")
    if tls_on and "tlscertificatekeyfile" not in options and any(c in text for c in closed):
        return TransportSecurityError(
            f"TLS connection to MongoDB at {hosts_of(uri)} failed ({detail}): "
            f"{_NO_CLIENT_CERTIFICATE}"
        )
    return None


@contextlib.contextmanager
def explained_tls_failures(uri: str) -> Iterator[None]:
    """Raise `TransportSecurityError` naming the fix instead of the driver's timeout when the
    block's first contact with the source fails in the TLS handshake."""
    try:
        yield
    except ConnectionFailure as exc:
        explained = tls_failure(exc, uri)
        if explained is None:
            raise
        raise explained from None  # the driver's text is in the message; its URI is not
