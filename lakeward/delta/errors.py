"""One clear error for a table whose storage cannot be used: `TableStorageError`.

delta-rs reports object-store trouble as an ``OSError`` (a few URI problems as ``DeltaError`` or
``TableNotFoundError``) whose text is the chain of causes, down to the store's own XML answer.
`storage_error` reads that text and says, in one line, what is wrong (which URI, which option)
and what to set. It never quotes a secret: the message is built from our own words plus short
pieces of the driver's text (an S3 error code, an HTTP status, the innermost cause) with every
credential value blanked out.

Transient or not: a refused connection, a timeout, a DNS answer of "try again", a 5xx or a
throttling answer can clear by itself (an object-store restart), so those are ``transient``;
retrying cannot fix a wrong scheme, a missing bucket, missing, unknown or refused credentials, a
host that does not exist or an option that does not parse. A wrong endpoint *port* looks exactly
like a store that is down (connection refused), so it stays transient: the error says both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import quote, urlsplit

__all__ = [
    "WHERE_OPTIONS_GO",
    "TableStorageError",
    "check_storage_options",
    "is_sensitive_option",
    "is_unavailable",
    "storage_error",
]

#: Where a lake's storage options are set, for the "what to do" part of every message.
WHERE_OPTIONS_GO = (
    "in the lake's storage options (LAKEWARD_LAKE_STORAGE_OPTIONS, the pipeline's "
    "sink.storage_options, or lakeward query --storage-option)"
)
_AS_REFERENCE = "as a secret reference (env:VAR, file:/path or vault:<mount>/<path>#<key>)"
_MAY_CLEAR = "this may clear by itself (a pipeline retries)"

#: Option names whose values are credentials: never shown, and blanked out of driver text.
_SENSITIVE_WORDS = ("secret", "password", "token", "key")
#: object_store's aliases for the endpoint option (it matches names case-insensitively).
_ENDPOINT_KEYS = ("aws_endpoint_url", "aws_endpoint", "endpoint_url", "endpoint")
_CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_S3_CODE = re.compile(r"<Code>([^<]+)</Code>")
_S3_MESSAGE = re.compile(r"<Message>([^<]+)</Message>")
_HTTP_STATUS = re.compile(r"^([1-5]\d\d) [A-Z][A-Za-z -]+$")

#: S3 error codes retrying may clear.
_TRANSIENT_CODES = {
    "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "OperationAborted",
}  # fmt: skip
#: S3 error codes that mean "the credentials": what is wrong, and what to check.
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId": ("the store does not know this access key", "check AWS_ACCESS_KEY_ID"),
    "SignatureDoesNotMatch": (
        "the store refused the request signature: the secret key does not belong to the key id",
        "check AWS_SECRET_ACCESS_KEY and AWS_ACCESS_KEY_ID",
    ),
    "ExpiredToken": ("the session credentials expired", "renew AWS_SESSION_TOKEN and its keys"),
    "InvalidToken": ("the session token is not valid", "check AWS_SESSION_TOKEN"),
    "TokenRefreshRequired": ("the session token must be refreshed", "renew AWS_SESSION_TOKEN"),
}


class TableStorageError(RuntimeError):
    """A table's storage cannot be used as configured: wrong URI, credentials, or store down.

    `transient` is true when retrying may help (the store did not answer, or answered "later");
    false when only a configuration change can. The message names the URI and what to set, and
    never contains a credential.
    """

    def __init__(self, uri: str, problem: str, *, transient: bool = False) -> None:
        super().__init__(f"{uri}: {problem}")
        self.uri = uri
        self.transient = transient


def is_sensitive_option(key: str) -> bool:
    """Whether a storage option holds a credential (its value must never be shown)."""
    return any(word in key.lower() for word in _SENSITIVE_WORDS)


def is_unavailable(exc: BaseException) -> bool:
    """The object store did not answer, or answered "later" (a transient `TableStorageError`):
    what a circuit breaker counts and a retry of a read may clear."""
    return isinstance(exc, TableStorageError) and exc.transient


def check_storage_options(uri: str, options: Mapping[str, str]) -> None:
    """Refuse options delta-rs would turn into a panic or a misleading error, before it sees them.

    Raises TableStorageError: an endpoint that is not an http(s) URL (delta-rs panics inside its
    runtime on one), or an empty access key (an ``env:``/``file:`` reference to an empty value,
    which S3 then reports as an unknown key).
    """
    if not _is_s3(uri):
        return
    endpoint = _option(options, _ENDPOINT_KEYS)
    if endpoint is not None:
        parts = urlsplit(endpoint.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname or " " in endpoint:
            raise TableStorageError(
                uri,
                "AWS_ENDPOINT_URL is not an http(s) URL (expected e.g. http://127.0.0.1:8333 or "
                f"https://s3.eu-west-1.amazonaws.com); fix it {WHERE_OPTIONS_GO}",
            )
    for key in _CREDENTIAL_KEYS:
        value = _option(options, (key.lower(),))
        if value is not None and not value.strip():
            raise TableStorageError(
                uri,
                f"{key} is empty (a reference to an unset or empty value?); set it "
                f"{WHERE_OPTIONS_GO}, {_AS_REFERENCE}",
            )


def storage_error(
    uri: str, options: Mapping[str, str], exc: BaseException
) -> TableStorageError | None:
    """The clear error for a delta-rs exception about the table's storage; None if it is not one.

    Recognises what delta-rs 1.6 raises for a wrong scheme or URI, a missing bucket, missing,
    unknown or refused credentials, a wrong region, an http endpoint without AWS_ALLOW_HTTP, an
    option that does not parse, an unknown host, and a store that does not answer; any other
    ``OSError`` from the object store becomes a transient TableStorageError quoting its innermost
    cause. A missing table (``TableNotFoundError`` for a path with no log) is not a storage error.
    """
    text = _ANSI.sub("", str(exc))
    found = _uri_problem(text) or _credentials_problem(text)
    if found is not None:
        return TableStorageError(uri, found)
    if not isinstance(exc, OSError):
        return None
    if not _is_s3(uri):
        return _local_problem(uri, text, options)
    endpoint = _endpoint(options)
    code = _S3_CODE.search(text)
    detail = _innermost(text, options)
    if "not yet implemented" in text or (code is not None and code.group(1) == "NotImplemented"):
        return TableStorageError(
            uri,
            f"the store cannot do the conditional put every Delta commit needs ({detail}); drop "
            'aws_conditional_put "disabled" from the storage options, or use a store that honours '
            "If-None-Match (AWS S3, recent MinIO, SeaweedFS)",
        )
    if code is not None:
        return _s3_answer(uri, code.group(1), _s3_message(text, options), endpoint)
    if "URL scheme is not allowed" in text:
        return TableStorageError(
            uri,
            f"the endpoint {endpoint} is http:// but AWS_ALLOW_HTTP is not true; set "
            f'AWS_ALLOW_HTTP "true" {WHERE_OPTIONS_GO}, or use an https endpoint',
        )
    if "Config error" in text or "failed to parse" in text.lower():
        return TableStorageError(
            uri, f"a storage option is not valid ({detail}); fix it {WHERE_OPTIONS_GO}"
        )
    if "dns error" in text:
        return _dns_problem(uri, text, endpoint, detail)
    status = _status(text)
    if status is not None and status < 500 and status not in (408, 429):
        return TableStorageError(
            uri,
            f"the store at {endpoint} refused the request ({status}: {detail}); check the URI "
            f"and the credentials {WHERE_OPTIONS_GO}",
        )
    return TableStorageError(
        uri,
        f"cannot reach the object store at {endpoint} ({detail}); {_MAY_CLEAR}; if it never "
        f"does, check AWS_ENDPOINT_URL {WHERE_OPTIONS_GO}",
        transient=True,
    )


def _uri_problem(text: str) -> str | None:
    scheme = re.search(r"Unknown scheme: ([^.\s]+)", text)
    if scheme is not None:
        return (
            f"unsupported scheme {scheme.group(1)!r}; a lake is a local path, file://..., "
            "or s3://bucket/prefix"
        )
    if "Unable to recognise URL" in text:
        return "not a table URI delta-rs can parse; expected s3://bucket/prefix/... or a path"
    return None


def _credentials_problem(text: str) -> str | None:
    # object_store names the half of the key pair it did not get.
    for key, other, missing in (
        ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "SecretAccessKey"),
        ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AccessKeyId"),
    ):
        if f"Missing {missing}" in text:
            return f"{key} is not set (only {other} is); set it {WHERE_OPTIONS_GO}, {_AS_REFERENCE}"
    # With no keys anywhere, delta-rs falls back to the EC2 instance metadata endpoint.
    if "169.254.169.254" in text:
        return (
            "no S3 credentials: neither the storage options nor the process environment set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and the EC2 instance metadata "
            f"endpoint gave none; set both {WHERE_OPTIONS_GO}, {_AS_REFERENCE}"
        )
    return None


def _s3_answer(uri: str, code: str, message: str, endpoint: str) -> TableStorageError:
    if code == "NoSuchBucket":
        bucket = urlsplit(uri).netloc
        return TableStorageError(
            uri,
            f"bucket {bucket!r} does not exist at {endpoint}; create it, or fix the bucket in "
            "the lake URI (the local stack creates 'lakeward')",
        )
    if code in _CREDENTIAL_CODES:
        wrong, check = _CREDENTIAL_CODES[code]
        return TableStorageError(uri, f"{wrong} (S3 said {code}); {check} {WHERE_OPTIONS_GO}")
    if code in ("AccessDenied", "AllAccessDisabled", "AccountProblem"):
        return TableStorageError(
            uri,
            "these credentials may not use the table (S3 said "
            f"{code}: {message}); grant them list, read, write and delete on the lake's prefix",
        )
    if code in ("AuthorizationHeaderMalformed", "PermanentRedirect", "IncorrectEndpoint"):
        return TableStorageError(
            uri,
            f"wrong region or endpoint for this bucket (S3 said {code}: {message}); set "
            f"AWS_REGION to the bucket's region {WHERE_OPTIONS_GO}",
        )
    if code == "RequestTimeTooSkewed":
        return TableStorageError(
            uri,
            "this machine's clock is too far from the store's (S3 said RequestTimeTooSkewed); "
            "synchronise the clock (NTP)",
        )
    transient = code in _TRANSIENT_CODES
    then = _MAY_CLEAR if transient else "check the URI and the storage options"
    return TableStorageError(
        uri, f"the store at {endpoint} answered {code}: {message}; {then}", transient=transient
    )


def _dns_problem(uri: str, text: str, endpoint: str, detail: str) -> TableStorageError:
    host = urlsplit(endpoint).hostname or endpoint
    # getaddrinfo's EAI_NONAME is a definite "no such name"; anything else (EAI_AGAIN, a
    # resolver that did not answer) may clear by itself.
    if "Name or service not known" in text or "No address associated" in text:
        return TableStorageError(
            uri,
            f"the endpoint host {host!r} does not exist (DNS has no such name); fix "
            f"AWS_ENDPOINT_URL {WHERE_OPTIONS_GO}",
        )
    return TableStorageError(
        uri,
        f"cannot resolve the endpoint host {host!r} now ({detail}); {_MAY_CLEAR}",
        transient=True,
    )


def _local_problem(uri: str, text: str, options: Mapping[str, str]) -> TableStorageError:
    detail = _innermost(text, options)
    if "Permission denied" in text or "Read-only file system" in text:
        return TableStorageError(
            uri,
            f"this process may not write the table's directory ({detail}); fix its "
            "permissions or choose another sink uri",
        )
    return TableStorageError(uri, f"cannot use the table's directory ({detail})", transient=True)


def _is_s3(uri: str) -> bool:
    return urlsplit(uri).scheme in ("s3", "s3a")


def _option(options: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    for key, value in options.items():
        if key.lower() in names:
            return value
    return None


def _endpoint(options: Mapping[str, str]) -> str:
    endpoint = _option(options, _ENDPOINT_KEYS)
    if endpoint is None:
        return "the AWS S3 default endpoint"
    parts = urlsplit(endpoint.strip())
    if parts.username or parts.password:  # never echo credentials embedded in a URL
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return endpoint.strip()


def _status(text: str) -> int | None:
    for line in _lines(text):
        match = _HTTP_STATUS.match(line)
        if match is not None:
            return int(match.group(1))
    return None


def _s3_message(text: str, options: Mapping[str, str]) -> str:
    match = _S3_MESSAGE.search(text)
    return _redact(match.group(1), options) if match else "no message"


def _innermost(text: str, options: Mapping[str, str]) -> str:
    """The deepest cause in delta-rs's chain (its last line not XML), credentials blanked."""
    lines = [line for line in _lines(text) if not line.startswith("<")]
    return _redact(lines[-1] if lines else "no detail", options)


def _lines(text: str) -> list[str]:
    return [line.strip().lstrip("↳").strip() for line in text.splitlines() if line.strip()]


def _redact(text: str, options: Mapping[str, str]) -> str:
    for key, value in options.items():
        if is_sensitive_option(key) and len(value) >= 4:
            text = text.replace(value, "***").replace(quote(value, safe=""), "***")
    return text
