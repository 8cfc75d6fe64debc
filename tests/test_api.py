"""The API's contract: bearer tokens and roles, the audit log, problem+json errors, the OpenAPI
document, status freshness and the JSON merge patch of PATCH.

Against a real Temporal dev server with a workflow-only worker: pipelines start and answer their
status query, but no worker polls their activity queue, so nothing reads MongoDB or Kafka (the
data path is covered by tests/test_api_e2e.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError
from temporalio.worker import Worker

from api.app import create_app
from api.pipelines import lag_seconds, merge_patch
from lakeward.settings import Settings
from lakeward.tokens import Role, TokenError, TokenStore
from workers.main import workflow_runner
from workflows.contracts import DATA_CONVERTER, TableProgress
from workflows.pipeline import PipelineWorkflow
from workflows.snapshot import SnapshotWorkflow

ADMIN = "lwt_test-admin-token-value"


@dataclass
class Api:
    http: httpx.AsyncClient
    settings: Settings
    client: Client
    tokens: TokenStore

    def as_(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def token(self, role: Role, name: str | None = None) -> str:
        return self.tokens.create(name or f"{role.value}-{os.urandom(3).hex()}", role)[1]


def api_settings(tmp_path: Path, unique: str, temporal_address: str) -> Settings:
    return Settings(
        temporal_address=temporal_address,
        task_queue=f"wf-{unique}",
        io_task_queue=f"io-{unique}",  # never polled here: no capture, no apply
        cpu_task_queue=f"cpu-{unique}",
        topic_prefix=f"t{unique}",
        admin_token=SecretStr(ADMIN),
        api_tokens_file=tmp_path / "tokens.json",
        audit_log=tmp_path / "audit.log",
        admin_token_file=tmp_path / "admin-token",
    )


async def end_workflows(client: Client, task_queue: str, timeout: float = 60) -> None:
    """Terminate every running workflow on the queue, until visibility shows none left (a worker
    shut down with running pipelines in its cache evicts them mid-await)."""
    query = f"TaskQueue = '{task_queue}' AND ExecutionStatus = 'Running'"
    deadline = time.monotonic() + timeout
    while (await client.count_workflows(query)).count:
        assert time.monotonic() < deadline, "workflows still running"
        async for execution in client.list_workflows(query):
            if execution.status == WorkflowExecutionStatus.RUNNING:
                with contextlib.suppress(RPCError):
                    await client.get_workflow_handle(execution.id).terminate("test over")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def workflow_worker(client: Client, settings: Settings) -> AsyncIterator[None]:
    """Runs pipeline workflows only; ends every workflow on its queue afterwards."""
    worker = Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[PipelineWorkflow, SnapshotWorkflow],
        workflow_runner=workflow_runner(),
        # Evicted after every task, on their own loop: runs left in the cache at shutdown would
        # be closed by the garbage collector, and the pipeline's cleanup in `finally` awaits.
        max_cached_workflows=0,
    )
    run = asyncio.create_task(worker.run())
    try:
        yield
    finally:
        await end_workflows(client, settings.task_queue)
        await worker.shutdown()
        await asyncio.gather(run, return_exceptions=True)


@pytest.fixture
async def api(temporal, unique, tmp_path) -> AsyncIterator[Api]:
    settings = api_settings(tmp_path, unique, temporal.temporal_address)
    client = await Client.connect(settings.temporal_address, data_converter=DATA_CONVERTER)
    app = create_app(settings, client=client)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        workflow_worker(client, settings),
        httpx.AsyncClient(transport=transport, base_url="http://lakeward") as http,
    ):
        yield Api(http, settings, client, TokenStore(settings.api_tokens_file))


def _spec(name: str, **extra: object) -> dict:
    return {
        "name": name,
        "source": {
            "uri": "mongodb://127.0.0.1:1/?replicaSet=rs0",
            "database": "shop",
            "collections": ["orders"],
        },
        "sink": {"uri": "/tmp/lakeward-api-test-lake-never-written"},
        **extra,
    }


def _is_problem(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


async def test_a_call_without_a_valid_token_is_a_401_problem(api: Api) -> None:
    missing = await api.http.get("/v1/pipelines")
    _is_problem(missing, 401)
    assert missing.headers["www-authenticate"] == "Bearer"
    _is_problem(await api.http.get("/v1/pipelines", headers=api.as_("lwt_guessed")), 401)
    basic = {"Authorization": "Basic YWRtaW46YWRtaW4="}
    _is_problem(await api.http.get("/v1/pipelines", headers=basic), 401)


async def test_health_readiness_and_metrics_need_no_token(api: Api) -> None:
    assert (await api.http.get("/healthz")).status_code == 200
    assert (await api.http.get("/readyz")).json() == {"status": "ready"}
    assert (await api.http.get("/metrics/")).status_code == 200


async def test_roles_allow_what_they_say(api: Api, unique: str) -> None:
    viewer, operator = api.token(Role.viewer), api.token(Role.operator)
    name = f"roles-{unique}"
    refused = await api.http.post("/v1/pipelines", json=_spec(name), headers=api.as_(viewer))
    assert "has role viewer; this needs operator" in _is_problem(refused, 403)["detail"]

    created = await api.http.post("/v1/pipelines", json=_spec(name), headers=api.as_(operator))
    assert created.status_code == 201, created.text
    read = await api.http.get(f"/v1/pipelines/{name}", headers=api.as_(viewer))
    assert read.status_code == 200 and read.json()["name"] == name
    listed = await api.http.get("/v1/pipelines", headers=api.as_(viewer))
    assert listed.status_code == 200

    paused = await api.http.post(f"/v1/pipelines/{name}:pause", headers=api.as_(operator))
    assert paused.status_code == 202, paused.text
    _is_problem(await api.http.post(f"/v1/pipelines/{name}:resume", headers=api.as_(viewer)), 403)
    # Stopping and reconfiguring are the admin's.
    _is_problem(await api.http.delete(f"/v1/pipelines/{name}", headers=api.as_(operator)), 403)
    patch = {"batching": {"max_records": 50}}
    refused = await api.http.patch(f"/v1/pipelines/{name}", json=patch, headers=api.as_(operator))
    _is_problem(refused, 403)
    stopped = await api.http.delete(f"/v1/pipelines/{name}", headers=api.as_(ADMIN))
    assert stopped.status_code == 202, stopped.text


async def test_a_revoked_token_is_refused_at_once(api: Api) -> None:
    token = api.token(Role.viewer, "ci")
    assert (await api.http.get("/v1/pipelines", headers=api.as_(token))).status_code == 200
    TokenStore(api.settings.api_tokens_file).revoke("ci")  # as `lakeward token revoke ci` does
    refused = await api.http.get("/v1/pipelines", headers=api.as_(token))
    assert "revoked" in _is_problem(refused, 401)["detail"]


def test_the_token_file_holds_hashes_only(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    record, token = store.create("ci", Role.operator)
    text = (tmp_path / "tokens.json").read_text()
    assert token not in text and record.sha256 in text
    assert stat.S_IMODE((tmp_path / "tokens.json").stat().st_mode) == 0o600
    assert store.identify(token) == record
    assert store.identify(token + "x") is None


def test_no_named_token_takes_the_bootstrap_admins_name(tmp_path: Path) -> None:
    """The audit log and the rate limits know the bootstrap admin token as `admin`."""
    with pytest.raises(TokenError, match="bootstrap admin"):
        TokenStore(tmp_path / "tokens.json").create("admin", Role.viewer)
    assert not (tmp_path / "tokens.json").exists()


async def test_a_generated_admin_token_is_private_and_survives_restarts(
    temporal, tmp_path: Path, unique: str
) -> None:
    settings = api_settings(tmp_path, unique, temporal.temporal_address)
    settings = settings.model_copy(update={"admin_token": None})
    client = await Client.connect(settings.temporal_address, data_converter=DATA_CONVERTER)
    create_app(settings, client=client)
    token_file = settings.admin_token_file
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    restarted = create_app(settings, client=client)  # a second start reuses it
    transport = httpx.ASGITransport(app=restarted)
    async with httpx.AsyncClient(transport=transport, base_url="http://lakeward") as http:
        ok = await http.get("/v1/pipelines", headers={"Authorization": f"Bearer {token}"})
    assert ok.status_code == 200, ok.text
    assert token_file.read_text().strip() == token


async def test_an_admin_token_reference_is_resolved_at_each_request(
    temporal, tmp_path: Path, unique: str
) -> None:
    """LAKEWARD_ADMIN_TOKEN=file:... (or vault:...): a rotated token works without a restart,
    the old one is refused at once, and an unreadable secret is a 503 that names the reference."""
    secret = tmp_path / "admin-token"
    secret.write_text("lwt_first-admin-token\n")
    settings = api_settings(tmp_path, unique, temporal.temporal_address)
    settings = settings.model_copy(update={"admin_token": SecretStr(f"file:{secret}")})
    client = await Client.connect(settings.temporal_address, data_converter=DATA_CONVERTER)
    transport = httpx.ASGITransport(app=create_app(settings, client=client))
    async with httpx.AsyncClient(transport=transport, base_url="http://lakeward") as http:

        async def status(token: str) -> int:
            headers = {"Authorization": f"Bearer {token}"}
            return (await http.get("/v1/pipelines", headers=headers)).status_code

        assert await status("lwt_first-admin-token") == 200
        secret.write_text("lwt_second-admin-token\n")
        assert await status("lwt_second-admin-token") == 200
        assert await status("lwt_first-admin-token") == 401
        secret.unlink()
        unavailable = await http.get("/v1/pipelines", headers={"Authorization": "Bearer lwt_any"})
    body = _is_problem(unavailable, 503)
    assert str(secret) in body["detail"] and "lwt_" not in body["detail"]


async def test_mutating_calls_are_audited_without_their_bodies(api: Api, unique: str) -> None:
    operator = api.token(Role.operator, "deployer")
    name = f"audit-{unique}"
    spec = _spec(name, sink={"uri": "/tmp/lakeward-audit", "storage_options": {"region": "zz-9"}})
    await api.http.post("/v1/pipelines", json=spec, headers=api.as_(operator))
    await api.http.post(f"/v1/pipelines/{name}:pause", headers=api.as_(operator))
    await api.http.delete(f"/v1/pipelines/{name}", headers=api.as_("lwt_wrong"))
    await api.http.get(f"/v1/pipelines/{name}", headers=api.as_(operator))  # reads: not audited

    # A restarted API appends to the same log.
    restarted = create_app(api.settings, client=api.client)
    transport = httpx.ASGITransport(app=restarted)
    async with httpx.AsyncClient(transport=transport, base_url="http://lakeward") as http:
        await http.delete(f"/v1/pipelines/{name}", headers=api.as_(ADMIN))

    text = api.settings.audit_log.read_text()
    assert "zz-9" not in text and "mongodb://" not in text and ADMIN not in text
    entries = [json.loads(line) for line in text.splitlines()]
    assert [(e["who"], e["method"], e["path"], e["pipeline"], e["status"]) for e in entries] == [
        ("deployer", "POST", "/v1/pipelines", name, 201),
        ("deployer", "POST", f"/v1/pipelines/{name}:pause", name, 202),
        (None, "DELETE", f"/v1/pipelines/{name}", name, 401),
        ("admin", "DELETE", f"/v1/pipelines/{name}", name, 202),
    ]
    assert all(e["time"].endswith("+00:00") for e in entries)
    assert stat.S_IMODE(api.settings.audit_log.stat().st_mode) == 0o600


async def test_errors_are_problem_json_without_internals(api: Api) -> None:
    admin = api.as_(ADMIN)
    assert (
        "no such endpoint" in _is_problem(await api.http.get("/v2/x", headers=admin), 404)["detail"]
    )
    _is_problem(await api.http.put("/v1/pipelines", headers=admin), 405)
    _is_problem(await api.http.get("/v1/pipelines/nope-404", headers=admin), 404)
    _is_problem(await api.http.get("/v1/pipelines?state=SLEEPING", headers=admin), 422)
    invalid = await api.http.post(
        "/v1/pipelines",
        json={"name": "Bad Name", "source": {"uri": "mongodb://u:hunter2@h/", "database": "d"}},
        headers=admin,
    )
    body = _is_problem(invalid, 422)
    assert {"name", "source.uri"} <= {e["field"] for e in body["errors"]}
    assert "hunter2" not in invalid.text

    app = create_app(api.settings, client=api.client)

    @app.get("/v1/boom")
    async def boom() -> None:
        raise RuntimeError("internal detail: password=hunter2 at /srv/secret")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://lakeward") as http:
        crashed = await http.get("/v1/boom")
    body = _is_problem(crashed, 500)
    assert "hunter2" not in crashed.text and "secret" not in crashed.text
    assert body["request_id"] in body["detail"]


async def test_status_shows_freshness_per_table_and_keeps_its_shape(api: Api, unique) -> None:
    name = f"lag-{unique}"
    created = await api.http.post("/v1/pipelines", json=_spec(name), headers=api.as_(ADMIN))
    assert created.status_code == 201, created.text
    status = created.json()
    assert {"name", "state", "tables"} <= set(status)
    assert status["tables"] == {
        "shop.orders": "/tmp/lakeward-api-test-lake-never-written/shop/orders"
    }
    assert status["progress"]["shop.orders"]["lag_seconds"] == 0.0  # no backlog
    again = await api.http.post("/v1/pipelines", json=_spec(name), headers=api.as_(ADMIN))
    assert again.status_code == 200, again.text
    other = _spec(name, batching={"max_records": 10})
    _is_problem(await api.http.post("/v1/pipelines", json=other, headers=api.as_(ADMIN)), 409)


def test_lag_is_zero_without_backlog_else_age_of_the_last_applied_change() -> None:
    table = TableProgress(table="d.c", uri="u", topic="t", last_source_ts_ms=1_000_000)
    assert lag_seconds(table, now=5_000.0) == 0.0
    table.backlog = 7
    assert lag_seconds(table, now=1_012.5) == 12.5
    assert lag_seconds(table, now=999.0) == 0.0  # clocks apart: never negative
    table.last_source_ts_ms = 0
    assert lag_seconds(table, now=5_000.0) is None


def test_merge_patch_follows_rfc_7396() -> None:
    # RFC 7396, appendix A (a selection).
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert merge_patch({"a": "b"}, {"a": None}) == {}
    assert merge_patch({"a": ["b"]}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}) == {"a": {"b": "d"}}
    assert merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}
    assert merge_patch({}, {"a": {"bb": {"ccc": None}}}) == {"a": {"bb": {}}}


async def test_patch_validates_the_merged_spec_field_by_field(api: Api, unique: str) -> None:
    name = f"patch-{unique}"
    created = await api.http.post("/v1/pipelines", json=_spec(name), headers=api.as_(ADMIN))
    assert created.status_code == 201, created.text
    bad = {"batching": {"max_records": 0}, "schema_policy": "lenient"}
    refused = await api.http.patch(f"/v1/pipelines/{name}", json=bad, headers=api.as_(ADMIN))
    fields = {e["field"] for e in _is_problem(refused, 422)["errors"]}
    assert fields == {"batching.max_records", "schema_policy"}
    _is_problem(
        await api.http.patch("/v1/pipelines/nope-404", json={}, headers=api.as_(ADMIN)), 404
    )


async def test_patch_reconfigures_through_the_workflow_update(api: Api, unique: str) -> None:
    name = f"reconf-{unique}"
    created = await api.http.post("/v1/pipelines", json=_spec(name), headers=api.as_(ADMIN))
    assert created.status_code == 201, created.text
    patch = {"batching": {"max_records": 500}, "reconcile": {"schedule": "@daily"}}
    changed = await api.http.patch(
        f"/v1/pipelines/{name}",
        content=json.dumps(patch),
        headers={**api.as_(ADMIN), "Content-Type": "application/merge-patch+json"},
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert set(body["changed"]) >= {"batching.max_records", "reconcile.schedule"}
    assert body["spec"]["batching"]["max_records"] == 500
    status = (await api.http.get(f"/v1/pipelines/{name}", headers=api.as_(ADMIN))).json()
    assert status["spec"]["batching"]["max_records"] == 500
    # The workflow's validator refuses what a running pipeline cannot take.
    moved = await api.http.patch(
        f"/v1/pipelines/{name}", json={"source": {"database": "other"}}, headers=api.as_(ADMIN)
    )
    assert _is_problem(moved, 422)["title"] == "Reconfiguration refused"


async def test_snapshot_and_its_deprecated_alias_refuse_unknown_collections(
    api: Api, unique: str
) -> None:
    name = f"snap-{unique}"
    created = await api.http.post("/v1/pipelines", json=_spec(name), headers=api.as_(ADMIN))
    assert created.status_code == 201, created.text
    for action in (":snapshot", ":resnapshot"):
        refused = await api.http.post(
            f"/v1/pipelines/{name}{action}", json={"collections": ["x"]}, headers=api.as_(ADMIN)
        )
        assert "does not capture x" in _is_problem(refused, 422)["detail"]
    accepted = await api.http.post(f"/v1/pipelines/{name}:snapshot", headers=api.as_(ADMIN))
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["collections"] == ["orders"]


async def test_unknown_reconciliations_are_404(api: Api, unique: str) -> None:
    admin = api.as_(ADMIN)
    listed = await api.http.get(f"/v1/pipelines/r-{unique}/reconciliations", headers=admin)
    assert listed.status_code == 200 and listed.json() == {"reconciliations": []}
    missing = await api.http.get(f"/v1/pipelines/r-{unique}/reconciliations/nope", headers=admin)
    _is_problem(missing, 404)
    name = f"rp-{unique}"
    await api.http.post("/v1/pipelines", json=_spec(name), headers=admin)
    # A workflow that is not a reconciliation of this pipeline is not one.
    other = await api.http.get(
        f"/v1/pipelines/{name}/reconciliations/pipeline:{name}", headers=admin
    )
    _is_problem(other, 404)


def test_the_openapi_document_describes_auth_and_every_error(tmp_path: Path) -> None:
    settings = api_settings(tmp_path, "doc", "127.0.0.1:1")
    document = create_app(settings).openapi()
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            secured = bool(operation.get("security"))
            assert secured == (path not in ("/healthz", "/readyz")), (method, path)
            ok = [s for s in operation["responses"] if s.startswith("2")]
            assert ok and all(
                "schema" in c for s in ok for c in operation["responses"][s]["content"].values()
            ), (method, path)
            for status, response in operation["responses"].items():
                if status[0] in "45":
                    assert list(response["content"]) == ["application/problem+json"], (path,)
            if secured:
                assert {"401", "403", "422", "500"} <= set(operation["responses"]), (path,)
    assert document["paths"]["/v1/pipelines/{name}:resnapshot"]["post"]["deprecated"] is True
