"""A pipeline source's MongoDB connection string, resolved at the moment of use.

`source.uri` (or the secret it refers to) holds no password in the spec; `source.username` and
`source.password` (secret references) are merged into it here, read together (one KV version,
one lease of dynamic credentials). When the result differs from the last one resolved for the
same references, the credentials were rotated: the worker's shared clients of the old string
are retired, and callers that hold a connection of their own (capture) compare and reconnect.
"""

from __future__ import annotations

import logging
import threading
from urllib.parse import quote, urlsplit, urlunsplit

from lakeward.mongo.clients import retire_client
from lakeward.mongo.tls import mongo_tls, with_tls
from lakeward.secrets import SecretReferenceError, resolve_many
from lakeward.settings import Settings
from workflows.spec import Source

__all__ = ["merge_credentials", "source_uri"]

_log = logging.getLogger("lakeward.credentials")

#: (uri, username, password) references -> the connection string last resolved from them.
_last: dict[tuple[str, str | None, str | None], str] = {}
_last_lock = threading.Lock()


def source_uri(source: Source, settings: Settings | None = None) -> str:
    """The source's connection string with its credentials, resolved now (blocking: Vault),
    and its TLS options (`source.tls`, else the settings': docs/transport-security.md)."""
    references = [source.uri]
    if source.username is not None:
        references.append(source.username)
    if source.password is not None:
        references.append(source.password)
    values = resolve_many(references)
    uri = values[0]
    if source.username is not None:
        password = values[2] if source.password is not None else None
        uri = merge_credentials(uri, values[1], password, source.uri)
    # Before the rotation check: the string compared and retired is the one clients dial.
    uri = with_tls(uri, mongo_tls(source.tls, settings))
    identity = (source.uri, source.username, source.password)
    with _last_lock:
        previous = _last.get(identity)
        _last[identity] = uri
    if previous is not None and previous != uri:
        retired = retire_client(previous)
        _log.info(
            "source credentials rotated",
            extra={"source": urlsplit(uri).hostname, "shared_clients_retired": retired},
        )
    return uri


def merge_credentials(uri: str, username: str, password: str | None, where: str = "") -> str:
    """`uri` with `username` (and `password`) as its user info, percent-encoded."""
    parts = urlsplit(uri)
    if parts.scheme not in ("mongodb", "mongodb+srv"):
        raise SecretReferenceError(
            f"source.uri ({where or 'the URI'}) must resolve to a mongodb:// or mongodb+srv:// "
            "URI to take source.username and source.password"
        )
    if parts.username:
        raise SecretReferenceError(
            f"source.uri ({where or 'the URI'}) already names a user and source.username is "
            "set; keep the user in one place"
        )
    userinfo = quote(username, safe="")
    if password is not None:
        userinfo += ":" + quote(password, safe="")
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc}"))
