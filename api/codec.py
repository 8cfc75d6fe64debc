"""The codec endpoint: Temporal's remote codec protocol, so the Web UI and the `temporal` CLI can
show an authorised user the payloads that workers store encrypted.

`POST /codec/decode` and `POST /codec/encode` take and return `{"payloads": [...]}`, Temporal
`Payload` messages in protobuf JSON (metadata values and data in base64). The Web UI calls
`<endpoint>/decode` from the browser with `Content-Type` and `X-Namespace` headers (and
`Authorization` or cookies when configured to), so the browser first sends a CORS preflight:
both are answered here for the origins in `LAKEWARD_CODEC_CORS_ORIGINS` only, and only under
`/codec`. Decoding happens in this process with the same keys as the workers
(lakeward/keys.py); a payload it cannot open is a 422 naming the key id.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, FastAPI, Request, Security
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials
from google.protobuf import json_format
from pydantic import BaseModel, ConfigDict, Field
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.converter import DataConverter

from api.auth import BEARER, Identity, require
from api.errors import Problem
from lakeward.keys import load_payload_keys
from lakeward.settings import Settings
from lakeward.tokens import Role
from workflows.codec import EncryptionCodec, PayloadDecryptionError, encrypted_converter

__all__ = [
    "CODEC_COOKIE",
    "CODEC_PREFIX",
    "api_data_converter",
    "app_codec",
    "codec_guard",
    "codec_router",
    "install_codec",
]

CODEC_PREFIX = "/codec"
#: The browser's credential for the codec endpoint (HttpOnly, SameSite=Strict, Path=/codec).
CODEC_COOKIE = "lakeward_codec_token"
_COOKIE_MAX_AGE_S = 8 * 3600

Guard = Callable[..., Awaitable[Identity]]


class CodecPayload(BaseModel):
    """One Temporal `Payload` in protobuf JSON."""

    model_config = ConfigDict(extra="ignore")
    metadata: dict[str, str] = Field(
        default_factory=dict, description="Metadata values, base64 (e.g. `encoding`)."
    )
    data: str = Field("", description="The payload bytes, base64.")


class CodecPayloads(BaseModel):
    """Body and answer of the codec endpoints (Temporal's `Payloads` message)."""

    model_config = ConfigDict(extra="ignore")
    payloads: list[CodecPayload] = Field(default_factory=list)


def app_codec(app: FastAPI, settings: Settings) -> EncryptionCodec:
    """This API process's codec, built once from the configured keys and kept on app.state."""
    codec: EncryptionCodec | None = getattr(app.state, "payload_codec", None)
    if codec is None:
        keys = load_payload_keys(settings)
        codec = app.state.payload_codec = EncryptionCodec(keys.current, keys.previous)
    return codec


def api_data_converter(app: FastAPI, settings: Settings) -> DataConverter:
    """The API's Temporal client converter: the workers' converter, encrypting."""
    return encrypted_converter(app_codec(app, settings))


def codec_guard(role: Role) -> Guard:
    """Lets through a token of at least `role`, sent as a bearer header (the `temporal` CLI's
    `--codec-auth`) or, from a browser, as the cookie `/codec/login` sets: the Web UI cannot
    send our bearer tokens, but with "Include cross-origin credentials" on it sends cookies."""
    check = require(role)

    async def authorize(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Security(BEARER),  # noqa: B008
    ) -> Identity:
        if credentials is None and (token := request.cookies.get(CODEC_COOKIE)):
            credentials = HTTPAuthorizationCredentials(scheme="Bearer", credentials=token)
        return await check(request, credentials)

    authorize.__name__ = f"codec_{role.value}"
    return authorize


def _to_proto(body: CodecPayloads) -> list[Payload]:
    return list(json_format.ParseDict(body.model_dump(), Payloads()).payloads)


def _to_json(payloads: list[Payload]) -> dict[str, Any]:
    return json_format.MessageToDict(Payloads(payloads=payloads))


def codec_router(
    codec: Callable[[], EncryptionCodec], decode_guard: Guard, encode_guard: Guard
) -> APIRouter:
    """The two codec routes; `codec` returns the process's codec when a request needs it."""
    router = APIRouter(prefix=CODEC_PREFIX, tags=["codec"])

    async def _apply(body: CodecPayloads, encode: bool) -> JSONResponse:
        try:
            payloads = _to_proto(body)
        except json_format.ParseError as exc:
            raise Problem(422, "Invalid payloads", f"not Temporal Payloads JSON: {exc}") from None
        try:
            if encode:
                result = await codec().encode(payloads)
            else:
                result = await codec().decode(payloads)
        except PayloadDecryptionError as exc:
            raise Problem(422, "Payload cannot be decrypted", str(exc)) from None
        # Decoded payloads are the secrets themselves: no cache may keep them.
        return JSONResponse(_to_json(result), headers={"Cache-Control": "no-store"})

    @router.post("/decode", response_model=CodecPayloads, dependencies=[Depends(decode_guard)])
    async def decode_payloads(body: CodecPayloads) -> JSONResponse:
        """Decrypt payloads (those not encrypted come back unchanged)."""
        return await _apply(body, encode=False)

    @router.post("/encode", response_model=CodecPayloads, dependencies=[Depends(encode_guard)])
    async def encode_payloads(body: CodecPayloads) -> JSONResponse:
        """Encrypt payloads with the current key (the Web UI uses it to start and signal)."""
        return await _apply(body, encode=True)

    return router


class _PrefixCORS:
    """CORS for one path prefix: Starlette's middleware for /codec, nothing for the rest."""

    def __init__(self, app: ASGIApp, prefix: str, origins: Sequence[str]) -> None:
        self.app = app
        self.prefix = prefix
        self.cors = CORSMiddleware(
            app,
            allow_origins=list(origins),
            allow_methods=["POST"],
            allow_headers=["Content-Type", "X-Namespace", "Authorization", "Authorization-Extras"],
            allow_credentials=True,
            # The Web UI may be served from a public address and the codec from a private one.
            allow_private_network=True,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefix + "/"):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


_SIGN_IN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Lakeward codec sign-in</title></head>
<body><h1>Lakeward codec endpoint</h1>
<p>{message}</p>
<form method="post" action="{prefix}/login">
<label>API token <input type="password" name="token" autocomplete="off" required></label>
<button type="submit">Sign in</button>
</form>
<p>Then, in the Temporal Web UI's codec server settings, turn on <em>Include cross-origin
credentials</em>. Open the Web UI under the same host name as this API (both on 127.0.0.1, or
both on localhost): the sign-in cookie is only sent within one site.</p>
</body></html>
"""


def _page(message: str) -> HTMLResponse:
    text = _SIGN_IN_PAGE.format(message=html.escape(message), prefix=CODEC_PREFIX)
    return HTMLResponse(text)


def _sign_in_router() -> APIRouter:
    """A browser sign-in for the Web UI's codec calls: the token goes into an HttpOnly cookie
    that only the codec routes receive. Pages for people, so not in the OpenAPI document
    (docs/encryption.md describes them)."""
    router = APIRouter(prefix=CODEC_PREFIX, include_in_schema=False)

    @router.get("/login", response_class=HTMLResponse)
    async def sign_in_page() -> HTMLResponse:
        return _page(
            "Sign in with a Lakeward API token (viewer or above) to let the Temporal Web UI "
            "decode payloads here."
        )

    @router.post("/login", response_class=HTMLResponse)
    async def sign_in(request: Request) -> HTMLResponse:
        fields = parse_qs((await request.body()).decode(errors="replace"))
        token = (fields.get("token") or [""])[0].strip()
        identity = request.app.state.authenticator.identify(token) if token else None
        if identity is None:
            raise Problem(401, "Unauthorized", "the token is unknown or revoked")
        response = _page(
            f"Signed in as {identity.name} ({identity.role.value}) for "
            f"{_COOKIE_MAX_AGE_S // 3600} hours."
        )
        response.set_cookie(
            CODEC_COOKIE,
            token,
            max_age=_COOKIE_MAX_AGE_S,
            path=CODEC_PREFIX,
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response

    @router.post("/logout", response_class=HTMLResponse)
    async def sign_out() -> HTMLResponse:
        response = _page("Signed out.")
        response.delete_cookie(CODEC_COOKIE, path=CODEC_PREFIX, httponly=True, samesite="strict")
        return response

    return router


def install_codec(
    app: FastAPI,
    settings: Settings,
    decode_guard: Guard | None = None,
    encode_guard: Guard | None = None,
) -> None:
    """Serve the codec endpoint and its browser sign-in on `app`, with CORS for the configured
    Web UI origins. Decoding needs a viewer token, encoding an operator token, unless other
    guards are given."""
    router = codec_router(
        lambda: app_codec(app, settings),
        decode_guard or codec_guard(Role.viewer),
        encode_guard or codec_guard(Role.operator),
    )
    app.include_router(router)
    app.include_router(_sign_in_router())
    if settings.codec_cors_origins:  # none configured: no CORS headers at all, preflights 405
        app.add_middleware(_PrefixCORS, prefix=CODEC_PREFIX, origins=settings.codec_cors_origins)
