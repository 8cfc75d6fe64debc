"""Checks of the values in a pipeline spec that names, URIs and paths must pass.

Pure string work (no I/O, no clocks): the spec validates inside workflows too. Each check raises
ValueError with a message that says what is wrong and how to write it instead; pydantic turns it
into a field error (the API's 422 names the field, never echoes the value).

What they keep out:
- names that cannot be a Kafka topic part or a directory of the lake (`<prefix>.<db>.<collection>`
  topics allow ASCII letters, digits, `.`, `_` and `-` only);
- secrets written as plain values: a spec travels through workflow history, so passwords, keys
  and tokens must be references (`env:`, `file:`, `vault:`) resolved at the moment of use;
- sink paths that leave the lake: `..` segments, percent-encoded dots, slashes or backslashes,
  backslashes themselves (a separator on Windows, an escape in URLs) and control characters.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

__all__ = [
    "SECRET_REFERENCE_PREFIXES",
    "check_collection_name",
    "check_mongodb_uri",
    "check_secret_reference",
    "check_sink_uri",
    "check_storage_option",
    "is_secret_reference",
]

SECRET_REFERENCE_PREFIXES = ("env:", "file:", "vault:")

_TOPIC_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_VAULT = re.compile(r"[^/#\s]+/[^#\s]+#[^#\s]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: %2e (.), %2f (/), %5c (\), %00 and %25 (an encoded %, decoded twice elsewhere).
_ENCODED_SEPARATOR = re.compile(r"%(2e|2f|5c|00|25)", re.IGNORECASE)
#: Option names whose values are credentials: they must be references.
_SENSITIVE = ("secret", "password", "token", "key_id", "account_key", "private_key",
              "credential", "sas")  # fmt: skip
#: MongoDB URI options that carry credentials.
_SENSITIVE_MONGODB_OPTIONS = {"tlscertificatekeyfilepassword", "authmechanismproperties"}


def is_secret_reference(value: str) -> bool:
    return value.startswith(SECRET_REFERENCE_PREFIXES)


def check_secret_reference(value: str) -> str:
    """A reference must be well formed: env:NAME, file:/path, vault:<mount>/<path>#<key>."""
    kind, _, target = value.partition(":")
    if _CONTROL.search(value):
        raise ValueError(f"the {kind}: reference contains a control character")
    if kind == "env" and not _ENV_NAME.fullmatch(target):
        raise ValueError(
            "an env: reference names an environment variable: letters, digits and '_', "
            "e.g. env:MONGO_URI"
        )
    if kind == "file" and not target.startswith("/"):
        raise ValueError(
            "a file: reference needs an absolute path (the worker's working directory is not "
            "the API's), e.g. file:/run/secrets/mongo-uri"
        )
    if kind == "vault" and not _VAULT.fullmatch(target):
        raise ValueError(
            "a vault: reference is vault:<mount>/<path>#<key>, e.g. vault:secret/lakeward/mongo#uri"
        )
    return value


def check_collection_name(name: str) -> str:
    if not _TOPIC_PART.fullmatch(name):
        raise ValueError(
            f"collection names may hold ASCII letters, digits, '.', '_' and '-' and start with a "
            f"letter, digit or '_' (they become Kafka topic names and lake directories); "
            f"{name!r} does not"
        )
    if name.startswith("system."):
        raise ValueError("system collections cannot be replicated")
    return name


def check_mongodb_uri(uri: str) -> str:
    """A mongodb:// or mongodb+srv:// URI with a host and no credential in it."""
    if _CONTROL.search(uri) or any(c.isspace() for c in uri):
        raise ValueError("contains whitespace or a control character")
    parts = urlsplit(uri)
    if parts.scheme not in ("mongodb", "mongodb+srv"):
        raise ValueError(
            "must be a mongodb:// or mongodb+srv:// URI, or a secret reference such as "
            "env:MONGO_URI"
        )
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not hosts or any(not host for host in hosts.split(",")):
        raise ValueError("names no host; write mongodb://host:27017/?replicaSet=rs0")
    if at and ":" in userinfo:
        # The spec travels through workflow history; a password there would leak.
        raise ValueError(
            "contains a password; put the URI in a secret and reference it, "
            "e.g. uri: env:MONGO_URI or uri: vault:secret/lakeward/mongo#uri"
        )
    for name, _ in parse_qsl(parts.query, keep_blank_values=True):
        if name.lower() in _SENSITIVE_MONGODB_OPTIONS:
            raise ValueError(
                f"the option {name} carries a credential; put the whole URI in a secret and "
                "reference it, e.g. uri: env:MONGO_URI"
            )
    return uri


def check_storage_option(key: str, value: str) -> None:
    """Credentials only as references; no URL with a password in any value."""
    if is_secret_reference(value):
        check_secret_reference(value)
        return
    if any(word in key.lower() for word in _SENSITIVE):
        raise ValueError(
            f"storage_options.{key} must be a secret reference, not a value (it would "
            f"be stored in workflow history): e.g. {key}: env:LAKE_{key.upper()}"
        )
    if "://" in value and urlsplit(value).password:
        raise ValueError(
            f"storage_options.{key} is a URL with a password; drop the credentials from it "
            "and pass them as references (e.g. AWS_SECRET_ACCESS_KEY: env:LAKE_SECRET)"
        )


def check_sink_uri(uri: str) -> str:
    """A local path, file:///path or s3://bucket/prefix that cannot leave its directory."""
    if not uri:
        raise ValueError("is empty; write a local path, file:///path or s3://bucket/prefix")
    if _CONTROL.search(uri):
        raise ValueError("contains a control character (NUL, newline, ...)")
    if "\\" in uri:
        raise ValueError("contains a backslash; separate path segments with '/'")
    if _ENCODED_SEPARATOR.search(uri):
        raise ValueError(
            "contains a percent-encoded '.', '/', '\\', '%' or NUL; write the path plainly"
        )
    parts = urlsplit(uri)
    scheme = parts.scheme
    if scheme not in ("", "file", "s3", "s3a"):
        raise ValueError("must be a local path, file:///path, or s3://bucket/prefix")
    if scheme in ("s3", "s3a") and (not parts.netloc or "@" in parts.netloc):
        raise ValueError(
            "an s3:// sink names its bucket and nothing else there: s3://bucket/prefix "
            "(credentials go in storage_options as references)"
        )
    if scheme == "file" and parts.netloc not in ("", "localhost"):
        raise ValueError("a file:// sink is local: file:///absolute/path")
    if parts.query or parts.fragment:
        raise ValueError("takes no query string or fragment ('?', '#')")
    path = parts.path if scheme else uri
    if ".." in path.split("/"):
        raise ValueError("must not contain '..' path segments")
    return uri
