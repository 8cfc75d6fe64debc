"""The hardened API: roles, revocation through the CLI, body limit, rate limits, CORS, security
headers, strict specs, the lake root and the audit log.

Against a real Temporal dev server (the `temporal` fixture) where a pipeline must exist, with a
workflow-only worker as in tests/test_api.py; the rest drives the real application in process.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import Client
from typer.testing import CliRunner

from api.app import create_app
from api.hardening import TokenBuckets
from lakeward.cli.main import app as cli
from lakeward.settings import Settings
from lakeward.tokens import Role, TokenStore
from tests.test_api import ADMIN, _spec, api_settings, workflow_worker
from workflows.contracts import DATA_CONVERTER

BASE = "http://lakeward"


def _client(app: Any, base_url: str = BASE) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url=base_url)


def _as(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["detail"]
    return body


def _offline_settings(tmp_path: Path, **changes: Any) -> Settings:
    """Settings of an app whose tests never reach Temporal."""
    return api_settings(tmp_path, "sec", "127.0.0.1:1").model_copy(update=changes)


@pytest.fixture
async def temporal_client(temporal) -> AsyncIterator[Client]:
    yield await Client.connect(temporal.temporal_address, data_converter=DATA_CONVERTER)


@pytest.fixture
def cli_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    yield {"LAKEWARD_API_TOKENS_FILE": str(tmp_path / "tokens.json")}


def _cli(env: dict[str, str], *args: str) -> str:
    result = CliRunner().invoke(cli, ["token", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.stdout


# --- roles and tokens ------------------------------------------------------------------------


async def test_a_viewer_cannot_pause_and_an_operator_can(
    temporal, temporal_client: Client, tmp_path: Path, unique: str
) -> None:
    settings = api_settings(tmp_path, unique, temporal.temporal_address)
    store = TokenStore(settings.api_tokens_file)
    viewer, operator = store.create("v", Role.viewer)[1], store.create("o", Role.operator)[1]
    name = f"pause-{unique}"
    async with (
        workflow_worker(temporal_client, settings),
        _client(create_app(settings, client=temporal_client)) as http,
    ):
        created = await http.post("/v1/pipelines", json=_spec(name), headers=_as(ADMIN))
        assert created.status_code == 201, created.text
        refused = await http.post(f"/v1/pipelines/{name}:pause", headers=_as(viewer))
        assert "needs operator" in _problem(refused, 403)["detail"]
        assert (await http.get(f"/v1/pipelines/{name}", headers=_as(viewer))).json()[
            "state"
        ] != "PAUSED"
        paused = await http.post(f"/v1/pipelines/{name}:pause", headers=_as(operator))
        assert paused.status_code == 202, paused.text
    entries = [json.loads(line) for line in settings.audit_log.read_text().splitlines()]
    assert [(e["who"], e["status"]) for e in entries if e["path"].endswith(":pause")] == [
        ("v", 403),
        ("o", 202),
    ]


async def test_a_token_revoked_with_the_cli_is_refused_on_the_very_next_request(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    created = json.loads(_cli(cli_env, "create", "--name", "ci", "--role", "viewer", "--json"))
    settings = _offline_settings(tmp_path)
    async with _client(create_app(settings)) as http:
        # A route that needs no Temporal: the codec decodes an empty list for a viewer.
        ok = await http.post("/codec/decode", json={"payloads": []}, headers=_as(created["token"]))
        assert ok.status_code == 200, ok.text
        _cli(cli_env, "revoke", "ci")
        refused = await http.post(
            "/codec/decode", json={"payloads": []}, headers=_as(created["token"])
        )
        assert "revoked" in _problem(refused, 401)["detail"]


def test_token_list_shows_nothing_that_helps_guessing_a_token(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    created = json.loads(_cli(cli_env, "create", "--name", "ci", "--role", "operator", "--json"))
    token = created["token"]
    [record] = TokenStore(Path(cli_env["LAKEWARD_API_TOKENS_FILE"])).records()
    listed = _cli(cli_env, "list") + _cli(cli_env, "list", "--json")
    assert "ci" in listed and "operator" in listed
    secret = token.removeprefix("lwt_")
    # No piece of the value or of its hash long enough to narrow a search (8 chars = 32+ bits).
    for text in (secret, record.sha256):
        pieces = {text[i : i + 8] for i in range(len(text) - 7)}
        assert not [p for p in pieces if p in listed], "token list shows part of a token or hash"
    assert set(json.loads(_cli(cli_env, "list", "--json"))[0]) == {
        "name", "role", "id", "created_at", "revoked_at"
    }  # fmt: skip


# --- body size -------------------------------------------------------------------------------


async def test_a_body_over_the_limit_is_a_413_however_it_is_sent(tmp_path: Path) -> None:
    settings = _offline_settings(tmp_path, api_max_body_bytes=4096)
    app = create_app(settings)
    big = json.dumps({"payloads": [{"data": "A" * 8192}]}).encode()
    async with _client(app) as http:
        declared = await http.post("/codec/decode", content=big, headers=_as(ADMIN))
        assert "4096 bytes" in _problem(declared, 413)["detail"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
            for start in range(0, len(big), 1000):
                yield big[start : start + 1000]

        streamed = await http.post("/v1/pipelines", content=chunks(), headers=_as(ADMIN))
        _problem(streamed, 413)
        small = await http.post("/codec/decode", json={"payloads": []}, headers=_as(ADMIN))
        assert small.status_code == 200, small.text

    # A Content-Length that lies (says 10, sends 8 KiB): the stream is counted, not the header.
    answer = await _raw_call(app, "/codec/decode", big, {"content-length": "10"})
    assert answer["status"] == 413, answer


async def _raw_call(app: Any, path: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
    """One POST straight through the ASGI interface, the body in 1000-byte messages."""
    chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    answer: dict[str, Any] = {"body": b""}

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    raw = {"authorization": f"Bearer {ADMIN}", "content-type": "application/json", **headers}
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": [(k.encode(), v.encode()) for k, v in raw.items()],
        "client": ("127.0.0.1", 5000), "server": ("lakeward", 80),
    }  # fmt: skip
    await app(scope, receive, send)
    return answer


# --- rate limits -----------------------------------------------------------------------------


async def test_each_token_has_its_own_bucket_and_gets_a_429_with_retry_after(
    tmp_path: Path,
) -> None:
    settings = _offline_settings(tmp_path, api_rate_limit_per_s=0.01, api_rate_limit_burst=3)
    store = TokenStore(settings.api_tokens_file)
    first, second = store.create("first", Role.viewer)[1], store.create("second", Role.viewer)[1]
    decode = {"payloads": []}
    async with _client(create_app(settings)) as http:
        for _ in range(3):
            ok = await http.post("/codec/decode", json=decode, headers=_as(first))
            assert ok.status_code == 200, ok.text
        limited = await http.post("/codec/decode", json=decode, headers=_as(first))
        body = _problem(limited, 429)
        retry_after = int(limited.headers["retry-after"])
        assert 1 <= retry_after <= 100 and "'first'" in body["detail"]
        other = await http.post("/codec/decode", json=decode, headers=_as(second))
        assert other.status_code == 200, other.text
        for path in ("/healthz", "/metrics", "/metrics/"):  # probes and Prometheus: never
            for _ in range(5):
                assert (await http.get(path)).status_code == 200, path
        metrics = (await http.get("/metrics")).text
    assert 'lakeward_api_requests_refused_total{reason="rate_limited"}' in metrics


async def test_requests_without_a_valid_token_are_limited_per_address(tmp_path: Path) -> None:
    settings = _offline_settings(
        tmp_path, api_anonymous_rate_limit_per_s=0.01, api_anonymous_rate_limit_burst=2
    )
    async with _client(create_app(settings)) as http:
        guesses = [await http.get("/v1/pipelines", headers=_as(f"lwt_guess{i}")) for i in range(3)]
        assert [g.status_code for g in guesses] == [401, 401, 429]
        assert int(guesses[2].headers["retry-after"]) >= 1
        # The codec sign-in form is a guessing path too.
        _problem(await http.post("/codec/login", data={"token": "lwt_guess"}), 429)
        # A valid token is not held back by its address's bucket.
        assert (
            await http.post("/codec/decode", json={"payloads": []}, headers=_as(ADMIN))
        ).is_success
        assert (await http.get("/healthz")).status_code == 200


def test_a_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    now = [0.0]
    buckets = TokenBuckets(rate=2.0, burst=3, max_keys=2, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)
    now[0] += 0.5
    assert buckets.take("a") == 0.0
    now[0] += 100  # long idle: full again, never more than the burst
    assert [buckets.take("a") for _ in range(4)][-1] > 0
    buckets.take("b"), buckets.take("c")  # over max_keys: the least recently used ("a") goes
    assert len(buckets._buckets) == 2 and "a" not in buckets._buckets


# --- CORS and headers ------------------------------------------------------------------------


async def test_no_cors_headers_by_default_and_only_on_the_codec_when_configured(
    tmp_path: Path,
) -> None:
    origin = "http://127.0.0.1:8233"
    preflight = {"Origin": origin, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}  # fmt: skip
    assert Settings.model_fields["codec_cors_origins"].default_factory() == []  # type: ignore[misc]
    async with _client(create_app(_offline_settings(tmp_path))) as http:
        for path in ("/codec/decode", "/v1/pipelines"):
            answer = await http.options(path, headers=preflight)
            assert not [h for h in answer.headers if h.startswith("access-control-")], path
        plain = await http.post(
            "/codec/decode", json={"payloads": []}, headers={"Origin": origin, **_as(ADMIN)}
        )
        assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers
    configured = _offline_settings(tmp_path, codec_cors_origins=[origin])
    async with _client(create_app(configured)) as http:
        allowed = await http.options("/codec/decode", headers=preflight)
        assert allowed.headers["access-control-allow-origin"] == origin
        api = await http.options("/v1/pipelines", headers=preflight)
        assert "access-control-allow-origin" not in api.headers
        other = await http.options("/codec/decode", headers={**preflight, "Origin": "http://evil"})
        assert "access-control-allow-origin" not in other.headers


async def test_every_answer_carries_the_security_headers(tmp_path: Path) -> None:
    app = create_app(_offline_settings(tmp_path))

    @app.get("/v1/boom")
    async def boom() -> None:
        raise RuntimeError("unexpected")

    async with _client(app) as http:
        answers = {
            "401": await http.get("/v1/pipelines"),
            "404": await http.get("/nowhere", headers=_as(ADMIN)),
            "500": await http.get("/v1/boom"),
            "codec": await http.post("/codec/decode", json={"payloads": []}, headers=_as(ADMIN)),
            "login": await http.get("/codec/login"),
            "health": await http.get("/healthz"),
            "docs": await http.get("/docs"),
            "openapi": await http.get("/openapi.json"),
        }
    for what, answer in answers.items():
        headers = answer.headers
        assert headers["x-content-type-options"] == "nosniff", what
        assert headers["x-frame-options"] == "DENY", what
        assert headers["referrer-policy"] == "no-referrer", what
        assert "frame-ancestors 'none'" in headers["content-security-policy"], what
        assert "strict-transport-security" not in headers, what  # http, and not configured
    for what in ("401", "500", "codec", "login"):
        assert answers[what].headers["cache-control"] == "no-store", what
    assert answers["500"].status_code == 500
    assert answers["401"].headers["content-security-policy"].startswith("default-src 'none'")
    # The interactive page still loads Swagger UI and reads the document.
    assert answers["docs"].status_code == 200
    docs_csp = answers["docs"].headers["content-security-policy"]
    assert "https://cdn.jsdelivr.net" in docs_csp and "connect-src 'self'" in docs_csp
    assert "form-action 'self'" in answers["login"].headers["content-security-policy"]


async def test_hsts_only_over_https_and_only_when_configured(tmp_path: Path) -> None:
    https = "https://lakeward"
    async with _client(create_app(_offline_settings(tmp_path)), https) as http:
        assert "strict-transport-security" not in (await http.get("/healthz")).headers
    configured = create_app(_offline_settings(tmp_path, api_hsts_max_age_s=31_536_000))
    async with _client(configured, https) as http:
        hsts = (await http.get("/healthz")).headers["strict-transport-security"]
        assert hsts == "max-age=31536000; includeSubDomains"
    async with _client(configured) as http:
        assert "strict-transport-security" not in (await http.get("/healthz")).headers


# --- specs and the lake root -----------------------------------------------------------------


async def test_bad_specs_are_422s_that_name_the_field_and_echo_no_secret(tmp_path: Path) -> None:
    bad = [
        (_spec("ok", surprise=1), "surprise"),
        (_spec("ok", sink={"uri": "/srv/lake/%2e%2e/etc"}), "sink.uri"),
        (_spec("ok", sink={"uri": "/srv/lake/../etc"}), "sink.uri"),
        (_spec("ok", sink={"uri": "s3://b", "storage_options": {"token": "hunter2"}}),
         "sink.storage_options"),
        ({**_spec("ok"), "source": {"uri": "mongodb://u:hunter2@h/", "database": "shop",
                                    "collections": [".."]}}, "source.collections"),
        ({**_spec("ok"), "source": {"uri": "mongodb://u:hunter2@h/", "database": "d"}},
         "source.uri"),
    ]  # fmt: skip
    async with _client(create_app(_offline_settings(tmp_path))) as http:
        for spec, field in bad:
            answer = await http.post("/v1/pipelines", json=spec, headers=_as(ADMIN))
            body = _problem(answer, 422)
            assert field in {e["field"] for e in body["errors"]}, body
            assert "hunter2" not in answer.text


async def test_a_local_sink_outside_the_lake_root_is_refused(
    temporal, temporal_client: Client, tmp_path: Path, unique: str
) -> None:
    root = tmp_path / "lakes"
    (root / "inside").mkdir(parents=True)
    os.symlink(tmp_path, root / "escape")
    settings = api_settings(tmp_path, unique, temporal.temporal_address)
    settings = settings.model_copy(update={"lake_root": root})
    async with (
        workflow_worker(temporal_client, settings),
        _client(create_app(settings, client=temporal_client)) as http,
    ):
        for outside in ("/tmp/elsewhere", f"file://{tmp_path}/x", str(root / "escape" / "x")):
            spec = _spec(f"root-{unique}", sink={"uri": outside})
            answer = await http.post("/v1/pipelines", json=spec, headers=_as(ADMIN))
            assert "LAKEWARD_LAKE_ROOT" in _problem(answer, 422)["detail"], outside
        spec = _spec(f"root-{unique}", sink={"uri": str(root / "inside")})
        created = await http.post("/v1/pipelines", json=spec, headers=_as(ADMIN))
        assert created.status_code == 201, created.text


# --- the audit log ---------------------------------------------------------------------------


AUDIT_PATHS = [
    "/audit",
    "/audit.log",
    "/v1/audit",
    "/.lakeward/audit.log",
    "/v1/pipelines/..%2f..%2f.lakeward%2faudit.log",
    "/static/audit.log",
]


async def test_the_audit_log_cannot_be_written_or_deleted_through_the_api(tmp_path: Path) -> None:
    settings = _offline_settings(tmp_path)
    async with _client(create_app(settings)) as http:
        await http.post("/codec/login", data={"token": ADMIN})  # one entry before the attempts
        before = settings.audit_log.read_bytes()
        attempts = 0
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            for path in AUDIT_PATHS:
                answer = await http.request(method, path, headers=_as(ADMIN), content=b"{}")
                assert answer.status_code in (404, 405), (method, path, answer.status_code)
                attempts += method != "GET"
    after = settings.audit_log.read_bytes()
    assert after.startswith(before), "an existing entry changed"
    new = [json.loads(line) for line in after[len(before) :].splitlines()]
    assert len(new) == attempts and all(e["status"] in (404, 405) for e in new)


async def test_a_client_cannot_forge_an_audit_line(tmp_path: Path) -> None:
    settings = _offline_settings(tmp_path)
    forged = '{"who":"admin","method":"DELETE","status":202}'
    async with _client(create_app(settings)) as http:
        for injected in ("%0a", "%0d%0a", "%e2%80%a8", "%00", "%1b[2J"):
            path = f"/v1/pipelines/x{injected}{forged}:pause"
            await http.post(path, headers=_as("lwt_nobody"))
    lines = settings.audit_log.read_text().splitlines()
    assert len(lines) == 5
    for line in lines:
        entry = json.loads(line)
        assert entry["who"] is None and entry["status"] == 401
        assert entry["path"].startswith("/v1/pipelines/x")
    assert all(line.isascii() and line.isprintable() for line in lines)


async def test_the_audit_log_survives_a_restart_and_keeps_no_secret(tmp_path: Path) -> None:
    settings = _offline_settings(tmp_path)
    async with _client(create_app(settings)) as http:
        await http.post("/codec/login", data={"token": ADMIN})
        await http.post("/v1/pipelines/lwt_leakedvalue123:pause", headers=_as(ADMIN))
    first = settings.audit_log.read_text()
    async with _client(create_app(settings)) as http:  # a new process reading the same files
        await http.post("/v1/pipelines", json=_spec("s", sink={"uri": "/x/%2e%2e"}),
                        headers=_as(ADMIN))  # fmt: skip
        await http.delete("/v1/pipelines/mongodb://u:hunter2@h", headers=_as(ADMIN))
    text = settings.audit_log.read_text()
    assert text.startswith(first) and len(text.splitlines()) == 4
    for secret in (ADMIN, "lwt_leakedvalue123", "hunter2"):
        assert secret not in text
    assert [json.loads(line)["status"] for line in text.splitlines()][2] == 422
    assert re.search(r'"path":"/v1/pipelines/\*\*\*:pause"', text)
