"""The API's protections at the HTTP edge: a body size limit, rate limits, security headers.

Pure ASGI middlewares (no BaseHTTPMiddleware), so nothing is buffered and every answer, the
problem+json ones included, passes through them:

- `BodyLimitMiddleware`: a request body over `api_max_body_bytes` is a 413. A declared
  Content-Length over the limit is refused before a byte is read; the body itself is counted as
  it streams in, so a short or missing Content-Length (chunked uploads) does not get more through.
- `RateLimitMiddleware`: a token bucket per token (by its name: the identity the audit log
  shows), and one per client address for requests without a valid token, so guessing tokens is
  slow. A refusal is a 429 with `Retry-After` in whole seconds. Health, readiness and metrics are
  never limited (probes and Prometheus must always get through). The buckets live in this
  process: with N API processes, a client gets up to N times the rate.
- `SecurityHeadersMiddleware`: nosniff, frame denial, no referrer, a restrictive CSP (a wider
  one for the interactive `/docs` page), `Cache-Control: no-store` on `/v1` and `/codec`, and HSTS
  when configured and the request came over https. It wraps the whole application, Starlette's
  error middleware included, so a 500 carries them too.

docs/api.md ("Security") says what each setting trades.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI, Request
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import cookie_parser
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import Identity
from api.errors import Problem, problem_response
from lakeward.metrics import API_REQUESTS_REFUSED
from lakeward.settings import Settings

__all__ = [
    "BodyLimitMiddleware",
    "BodyTooLarge",
    "RateLimitMiddleware",
    "SecurityHeadersMiddleware",
    "TokenBuckets",
    "install_hardening",
]

#: Never rate limited: probes and Prometheus.
UNLIMITED_PATHS = ("/healthz", "/readyz", "/metrics")
#: The cookie the codec sign-in sets (api/codec.py); only the codec routes read it.
_CODEC_PREFIX = "/codec/"
_CODEC_COOKIE = "lakeward_codec_token"


#: JSON answers load nothing and may not be framed.
CSP_JSON = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
#: The codec sign-in page: a form posting to itself, no scripts.
CSP_PAGE = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; " \
    "frame-ancestors 'none'; base-uri 'none'"  # fmt: skip
#: FastAPI's /docs and /redoc pages load Swagger UI / ReDoc from jsDelivr and run an inline
#: script that points them at /openapi.json.
CSP_DOCS = (
    "default-src 'none'; script-src 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com "
    "https://cdn.redoc.ly; connect-src 'self'; worker-src blob:; frame-ancestors 'none'; "
    "base-uri 'none'"
)
_DOCS_PATHS = ("/docs", "/redoc")


class BodyTooLarge(StarletteHTTPException):
    """A request body over the limit; rendered as a 413 problem."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over {limit} bytes")
        self.limit = limit


def _too_large(limit: int) -> Response:
    API_REQUESTS_REFUSED.labels("body_too_large").inc()
    return problem_response(
        413,
        "Content Too Large",
        f"the request body is over the limit of {limit} bytes (LAKEWARD_API_MAX_BODY_BYTES); "
        "a pipeline spec is a few kilobytes",
    )


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _too_large(self.max_bytes)(scope, receive, send)
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            # Read outside FastAPI's body parsing (a route reading the stream itself).
            if started:
                raise
            await _too_large(self.max_bytes)(scope, receive, send)


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """Token buckets by key: `rate` per second refill up to `burst`; in-process, bounded.

    At most `max_keys` buckets are kept: past that, the least recently used go first. A dropped
    bucket is a full one, so this only forgives clients that went quiet, or, under a flood from
    more than `max_keys` addresses, the oldest of them.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate, self.burst, self.max_keys, self.clock = rate, burst, max_keys, clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, key: str) -> float:
        """Take one token: 0.0 when allowed, else the seconds until one is available."""
        now = self.clock()
        bucket = self._buckets.pop(key, None) or _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        self._buckets[key] = bucket
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate


def _presented_token(scope: Scope) -> str | None:
    """The bearer token of the request, or on the codec routes the sign-in cookie."""
    headers = Headers(scope=scope)
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if scope["path"].startswith(_CODEC_PREFIX):
        return cookie_parser(headers.get("cookie", "")).get(_CODEC_COOKIE) or None
    return None


class RateLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        identify: Callable[[str], Identity | None],
        per_token: TokenBuckets | None,
        per_address: TokenBuckets | None,
    ) -> None:
        self.app = app
        self.identify = identify
        self.per_token = per_token
        self.per_address = per_address

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(UNLIMITED_PATHS):
            await self.app(scope, receive, send)
            return
        token = _presented_token(scope)
        try:
            identity = self.identify(token) if token else None
        except Problem:  # the admin token's secret is unreadable: the route answers 503
            identity = None
        if identity is not None:
            buckets, key = self.per_token, identity.name
            detail = f"token {identity.name!r} is over its rate limit (LAKEWARD_API_RATE_LIMIT_*)"
        else:
            address = (scope.get("client") or ("unknown",))[0]
            buckets, key = self.per_address, str(address)
            detail = (
                "too many requests without a valid token from this address "
                "(LAKEWARD_API_ANONYMOUS_RATE_LIMIT_*)"
            )
        wait = buckets.take(key) if buckets is not None else 0.0
        if wait <= 0:
            await self.app(scope, receive, send)
            return
        API_REQUESTS_REFUSED.labels("rate_limited").inc()
        retry_after = max(1, math.ceil(wait))
        response = problem_response(
            429,
            "Too Many Requests",
            f"{detail}; retry after {retry_after} s",
            {"Retry-After": str(retry_after)},
        )
        await response(scope, receive, send)


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, hsts_max_age_s: int = 0) -> None:
        self.app = app
        self.hsts = f"max-age={hsts_max_age_s}; includeSubDomains" if hsts_max_age_s else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith(_DOCS_PATHS):
            csp = CSP_DOCS
        elif path.startswith(_CODEC_PREFIX) and not path.startswith(
            ("/codec/decode", "/codec/encode")
        ):
            csp = CSP_PAGE
        else:
            csp = CSP_JSON
        private = path.startswith(("/v1/", _CODEC_PREFIX)) or path == "/v1"
        hsts = self.hsts if scope.get("scheme") == "https" else None

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if not (private and k.lower() == b"cache-control")]  # fmt: skip
                present = {k.lower() for k, _ in headers}
                added = {
                    b"x-content-type-options": b"nosniff",
                    b"x-frame-options": b"DENY",
                    b"referrer-policy": b"no-referrer",
                    b"content-security-policy": csp.encode(),
                }
                if private:
                    added[b"cache-control"] = b"no-store"
                if hsts:
                    added[b"strict-transport-security"] = hsts.encode()
                headers += [(k, v) for k, v in added.items() if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install_hardening(app: FastAPI, settings: Settings) -> None:
    """Add the body limit and the rate limits as middleware (where this is called decides their
    place in the stack: app.py puts them outside the audit log, so a flood is not written line
    by line), and wrap the finished stack in the security headers."""

    def identify(token: str) -> Identity | None:
        return app.state.authenticator.identify(token)  # type: ignore[no-any-return]

    def buckets(rate: float, burst: int) -> TokenBuckets | None:
        return TokenBuckets(rate, burst) if rate > 0 else None

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.api_max_body_bytes)
    app.add_middleware(
        RateLimitMiddleware,
        identify=identify,
        per_token=buckets(settings.api_rate_limit_per_s, settings.api_rate_limit_burst),
        per_address=buckets(
            settings.api_anonymous_rate_limit_per_s, settings.api_anonymous_rate_limit_burst
        ),
    )

    async def on_too_large(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, BodyTooLarge)
        return _too_large(exc.limit)

    app.add_exception_handler(BodyTooLarge, on_too_large)

    build = app.build_middleware_stack

    def build_with_headers() -> ASGIApp:
        return SecurityHeadersMiddleware(build(), hsts_max_age_s=settings.api_hsts_max_age_s)

    app.build_middleware_stack = build_with_headers  # type: ignore[method-assign]
