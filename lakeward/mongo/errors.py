"""Errors the MongoDB side of capture raises when retrying cannot help.

Both are terminal: the capture activity turns them into non-retryable application errors, so the
pipeline moves to FAILED with the message, which always names the fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from pymongo.errors import ConnectionFailure, OperationFailure

__all__ = [
    "CaptureSourceError",
    "HistoryLostError",
    "SourceAccess",
    "SourceCredentialsError",
    "SourceLoginRefused",
    "change_stream_access",
    "is_authentication_failure",
    "is_unavailable",
    "oplog_access",
    "source_error",
]

#: Server error codes that mean the resume point is no longer (or was never) in the oplog.
_HISTORY_LOST_CODES = {
    286,  # ChangeStreamHistoryLost: the start point fell off the oplog
    280,  # ChangeStreamFatalError: "the resume token was not found" at its cluster time
    136,  # CappedPositionLost: the oplog was truncated past a tailing cursor
}
_NO_REPLICA_SET_CODES = {40573}  # "$changeStream is only supported on replica sets"
_UNAUTHORIZED_CODES = {13}  # Unauthorized: logged in, but no role grants the action
_AUTHENTICATION_CODES = {18}  # AuthenticationFailed: unknown user, wrong password or authSource
_POST_IMAGE_MISSING_CODES = {47}  # NoMatchingDocument under fullDocument: required
_TOO_LARGE_CODES = {10334}  # BSONObjectTooLarge: a change event over 16 MB

#: The start of the server's Unauthorized message: database, command and its first argument.
_DENIED = re.compile(r'not authorized on (\S+) to execute command \{ (\w+): "?([^",]*)"?')


class CaptureSourceError(RuntimeError):
    """MongoDB cannot serve the stream as configured (retrying will not help)."""


class SourceCredentialsError(CaptureSourceError):
    """MongoDB refused the credentials: the login, or an action of the logged-in user. A
    rotation of credentials from a secret store looks like this while it is half done."""


class SourceLoginRefused(SourceCredentialsError):
    """MongoDB refused the login (user, password or authSource). Credentials from a secret
    store may be mid-rotation, so the capture activity retries this one (docs/secrets.md)."""


class HistoryLostError(CaptureSourceError):
    """The resume point (resume token or oplog timestamp) is gone from the oplog.

    Changes between the checkpoint and the oldest oplog entry cannot be read any more, so
    continuing would silently lose them. The pipeline's `source.on_history_lost` policy says what
    happens next (`fail`: the pipeline fails with this error; `resnapshot`: the workflow re-syncs).
    """

    FIX = (
        "the resume point is gone from the oplog; set source.on_history_lost: resnapshot (or "
        "snapshot.mode: when_needed) to re-sync from a new snapshot, and enlarge the oplog"
    )

    def __init__(self, where: str, resume_point: Any, detail: str = "") -> None:
        self.resume_point = resume_point
        suffix = f" ({detail})" if detail else ""
        super().__init__(f"{where}: {self.FIX}; resume point {resume_point!r}{suffix}")


@dataclass(frozen=True)
class SourceAccess:
    """Who a reader logs in as and what it must be allowed: what a permission error names.

    Built from the connection string, whose password it never keeps.
    """

    user: str | None
    #: The database the user is defined in (the URI's authSource, else its database, else admin).
    auth_source: str
    #: The privileges the strategy needs, in words.
    needs: str
    #: Built-in roles that grant them, as (role, database).
    roles: tuple[tuple[str, str], ...]
    #: Privileges no built-in role grants, said after the roles.
    also: str = ""

    @classmethod
    def of(
        cls, uri: str, needs: str, roles: tuple[tuple[str, str], ...], also: str = ""
    ) -> SourceAccess:
        """The access of the URI's user (no DNS lookups: mongodb+srv is only split)."""
        parts = urlsplit(uri)
        options = {key.lower(): value for key, value in parse_qsl(parts.query)}
        auth_source = options.get("authsource") or unquote(parts.path.lstrip("/")) or "admin"
        user = unquote(parts.username) if parts.username else None
        return cls(user, auth_source, needs, roles, also)

    def grant(self) -> str:
        """The mongosh command that grants the roles."""
        roles = ", ".join(f'{{role: "{role}", db: "{db}"}}' for role, db in self.roles)
        user = self.user or "<user>"
        return f'db.getSiblingDB("{self.auth_source}").grantRolesToUser("{user}", [{roles}])'


def change_stream_access(uri: str, database: str) -> SourceAccess:
    """What the change_stream strategy needs: a change stream over the whole database."""
    return SourceAccess.of(
        uri,
        f"a change stream over database {database!r} needs the find and changeStream actions "
        f"on all of its collections, which role read on {database!r} grants (a role on the "
        "listed collections only is not enough)",
        (("read", database),),
    )


def oplog_access(uri: str, database: str, *, pre_images: bool) -> SourceAccess:
    """What the oplog strategy needs; `pre_images`: it reads MongoDB's stored pre-images."""
    also = ""
    if pre_images:
        also = (
            "; pre_images and oplog_update: diff also need find on config.system.preimages, "
            "which no built-in role grants: create a role with privileges [{resource: {db: "
            '"config", collection: "system.preimages"}, actions: ["find"]}] and grant it'
        )
    return SourceAccess.of(
        uri,
        "the oplog strategy needs find on local.oplog.rs (role read on 'local', or "
        f"clusterMonitor) and find on {database!r} to look up updated documents (role read "
        f"on {database!r})",
        (("read", "local"), ("read", database)),
        also,
    )


def is_authentication_failure(exc: OperationFailure) -> bool:
    """Whether MongoDB refused the login itself (user, password or authSource wrong)."""
    return exc.code in _AUTHENTICATION_CODES


def source_error(
    exc: OperationFailure, where: str, resume_point: Any, access: SourceAccess
) -> Exception:
    """The clear error for a server failure, or `exc` itself when it may be transient.

    `access` is who the reader logs in as and what its strategy needs, for permission errors.
    """
    code = exc.code
    if code in _HISTORY_LOST_CODES:
        return HistoryLostError(where, resume_point, f"server error {code}: {_first_line(exc)}")
    if code in _NO_REPLICA_SET_CODES:
        return CaptureSourceError(
            f"{where}: change streams need a replica set or sharded cluster; "
            "start mongod with --replSet and initiate it"
        )
    if code in _AUTHENTICATION_CODES:
        return SourceLoginRefused(
            f"{where}: MongoDB refused the login of user {access.user!r} with authSource "
            f"{access.auth_source!r} (server error {code}: {_first_line(exc)}); check the user "
            "name and password in the MongoDB URI (source.uri, or the secret it refers to) and "
            "its authSource, the database the user was created in (?authSource=<db>; default: "
            "the URI's database, else admin)"
        )
    if code in _UNAUTHORIZED_CODES and _is_not_logged_in(exc) and access.user:
        # Logged in once, then no more: the user was changed or dropped under the connection.
        return SourceCredentialsError(
            f"{where}: MongoDB no longer accepts the login of user {access.user!r} (server "
            f"error {code}: {_first_line(exc)}); the user was changed or dropped, e.g. by a "
            "credentials rotation: check the credentials source.uri, source.username and "
            "source.password refer to"
        )
    if code in _UNAUTHORIZED_CODES and _is_not_logged_in(exc):
        return SourceCredentialsError(
            f"{where}: MongoDB requires a login and the URI names no user (server error {code}: "
            f"{_first_line(exc)}); put the user in the MongoDB URI (source.uri, or the secret it "
            f"refers to): mongodb://<user>:<password>@<host>/?authSource=<db>; {access.needs}"
            f"{access.also}"
        )
    if code in _UNAUTHORIZED_CODES:
        who = f"MongoDB user {access.user!r}" if access.user else "the URI's MongoDB user"
        return SourceCredentialsError(
            f"{where}: {who} is not allowed to read the changes (server error {code}: "
            f"{_denied(exc)}); {access.needs}. To fix: {access.grant()}{access.also}"
        )
    if code in _POST_IMAGE_MISSING_CODES:
        return CaptureSourceError(
            f"{where}: full_document is 'required' but MongoDB has no post-image for an update; "
            "enable changeStreamPreAndPostImages on the collection (source.enable_pre_images: "
            "true) or use full_document: update_lookup"
        )
    if code in _TOO_LARGE_CODES:
        return CaptureSourceError(
            f"{where}: a change event is over MongoDB's 16 MB limit ({_first_line(exc)}); "
            "turn off pre_images or post-images (full_document: update_lookup) for this "
            "collection, or use the oplog strategy, whose entries stay under the limit"
        )
    return exc


def _first_line(exc: OperationFailure) -> str:
    message = str(exc.details.get("errmsg") if exc.details else exc) or str(exc)
    return message.splitlines()[0][:300]


def _is_not_logged_in(exc: OperationFailure) -> bool:
    """Whether the server refused a command because the connection never logged in."""
    return "requires authentication" in _first_line(exc)


def _denied(exc: OperationFailure) -> str:
    """What the server refused, without the command it echoes (long, and mostly noise)."""
    message = _first_line(exc)
    match = _DENIED.match(message)
    if match is None:
        return message
    database, command, argument = match.groups()
    if "$changeStream" in message:
        return f"not authorized to open a change stream ($changeStream) on {database!r}"
    if argument and not argument.isdigit():
        return f"not authorized to run {command} on {database}.{argument}"
    return f"not authorized to run {command} on {database!r}"


def is_unavailable(exc: BaseException) -> bool:
    """MongoDB did not answer: no primary to select, a refused or reset connection, a network
    timeout, a stepdown mid-operation. What a circuit breaker counts and a retry may clear;
    an error the server answered with (a bad query, permissions) is neither."""
    return isinstance(exc, ConnectionFailure)
