"""No secret anywhere it should not be (DESIGN.md invariant 7, issue 8).

One end-to-end run with every kind of credential Lakeward handles: a MongoDB user's password
(an authenticated mongod of the test's own) inside a URI the spec only references, S3 keys for
a lake on SeaweedFS, the payload-codec key, API tokens, and a second pipeline whose URI holds a
wrong password so that errors are written too. Real `lakeward worker` and `lakeward api`
processes, debug logging. Afterwards every place a secret could end up is read back and scanned
for every secret value (and its URL-encoded form):

- the raw Temporal history of every workflow the run started, and the same history with its
  payloads decrypted (a secret in a workflow input would be encrypted, but still in history);
- the worker's, the API's and the Temporal server's logs;
- the worker's and the API's /metrics;
- the Delta commit metadata of every table written;
- the audit log, and the API's answers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from deltalake import DeltaTable
from pydantic import SecretStr
from temporalio.api.common.v1 import Payload
from temporalio.client import Client

from lakeward.keys import load_payload_keys, new_key_text
from lakeward.settings import Settings, StackSettings
from lakeward.stack.servers_extra import LAKE_BUCKET, s3_credentials
from lakeward.tokens import Role, TokenStore, generate_token
from tests import test_capture_permissions
from tests.faults.rig import compare, lake_table, source_documents
from tests.test_capture_permissions import DB, AuthMongo
from tests.test_workers import (
    end_pipeline,
    free_port,
    start_api_process,
    start_worker_process,
    stop_worker_process,
    worker_settings,
)
from workers.main import connect
from workflows.codec import EncryptionCodec

#: The authenticated private mongod of the permission tests (a fixture of this module too).
auth_mongo = test_capture_permissions.auth_mongo

#: Documents before the pipeline starts (the snapshot), then changes while it streams.
SNAPSHOT_DOCS, INSERTS, UPDATES, DELETES = 40, 20, 5, 5


def secret_forms(value: str) -> set[str]:
    """How a secret could appear: as is, and URL-encoded (as inside a URI)."""
    return {value, quote(value, safe="")}


def leaks(secret_values: dict[str, str], places: dict[str, str]) -> list[str]:
    """Every (secret, place) where a form of the secret occurs; the secret itself masked."""
    found = []
    for label, value in secret_values.items():
        for form in secret_forms(value):
            for place, text in places.items():
                at = text.find(form)
                if at >= 0:
                    context = text[max(0, at - 60) : at].replace("\n", " ")
                    found.append(f"{label} in {place}, after: ...{context!r}")
    return found


def test_the_scan_finds_a_secret_as_is_and_url_encoded() -> None:
    """The scanner itself can fail: a planted secret is found in both forms, masked."""
    places = {"log": "connecting to mongodb://u:p%2Fw@h", "metrics": "x 1\np/w 2"}
    assert len(leaks({"password": "p/w"}, places)) == 2
    assert all("p/w" not in line for line in leaks({"password": "p/w"}, places))
    assert leaks({"password": "absent"}, places) == []


async def _until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"not reached in {timeout:.0f}s: {what}"
        await asyncio.sleep(0.5)


def _decrypted_payloads(history_json: str, codec: EncryptionCodec) -> Iterator[str]:
    """The plaintext of every payload in a raw history (JSON with base64 payloads)."""

    def walk(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            if "data" in node and isinstance(node.get("metadata"), dict):
                yield node
            for child in node.values():
                yield from walk(child)
        elif isinstance(node, list):
            for child in node:
                yield from walk(child)

    for raw in walk(json.loads(history_json)):
        payload = Payload(
            metadata={k: base64.b64decode(v) for k, v in raw["metadata"].items()},
            data=base64.b64decode(raw.get("data", "")),
        )
        yield codec.decrypt(payload).data.decode("utf-8", errors="replace")


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_an_end_to_end_run_leaves_no_secret_in_history_logs_metrics_or_the_lake(
    test_stack, auth_mongo: AuthMongo, unique: str, tmp_path: Path
) -> None:
    stack: StackSettings = test_stack.need("kafka", "temporal", "s3")
    s3 = s3_credentials(stack)
    tokens = TokenStore(tmp_path / "api-tokens.json")
    _, operator_token = tokens.create("ci", Role.operator)
    admin_token, payload_key = generate_token(), new_key_text()
    wrong_password = secrets.token_hex(12)
    mongo_uri = auth_mongo.uri("reader")
    secret_values = {
        "MongoDB password": auth_mongo.passwords["reader"],
        "MongoDB URI": mongo_uri,
        "wrong MongoDB password": wrong_password,
        "S3 secret key": s3.secret_access_key,
        "payload key": payload_key,
        "admin token": admin_token,
        "operator token": operator_token,
    }

    metrics_port, api_port = free_port(), free_port()
    settings = worker_settings(
        stack, unique, worker_metrics_port=metrics_port, payload_key=SecretStr(payload_key)
    )
    common = {"LAKEWARD_PAYLOAD_KEY": payload_key, "LAKEWARD_LOG_LEVEL": "debug"}
    worker = start_worker_process(
        settings,
        tmp_path / "worker.log",
        env={
            **common,
            "LEAK_MONGO_URI": mongo_uri,
            "LEAK_BAD_MONGO_URI": auth_mongo.uri("reader", wrong_password),
            "LEAK_S3_KEY_ID": s3.access_key_id,
            "LEAK_S3_SECRET": s3.secret_access_key,
        },
    )
    api_env = {
        **common,
        "LAKEWARD_ADMIN_TOKEN": admin_token,
        "LAKEWARD_API_TOKENS_FILE": str(tokens.path),
        "LAKEWARD_AUDIT_LOG": str(tmp_path / "audit.log"),
    }
    api = start_api_process(settings, api_port, tmp_path / "api.log", api_env)
    client = await connect(settings)
    answers: list[str] = []  # every API answer body: they must not leak either

    name, bad = f"leak-{unique}", f"leak-bad-{unique}"
    collection = f"leak_{unique}"
    storage = {
        "AWS_ENDPOINT_URL": stack.s3_endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_REGION": s3.region,
        "AWS_ACCESS_KEY_ID": "env:LEAK_S3_KEY_ID",
        "AWS_SECRET_ACCESS_KEY": "env:LEAK_S3_SECRET",
    }
    lake_options = {**storage, "AWS_ACCESS_KEY_ID": s3.access_key_id,
                    "AWS_SECRET_ACCESS_KEY": s3.secret_access_key}  # fmt: skip
    with auth_mongo.admin() as mongo:
        mongo[DB][collection].insert_many(
            [{"_id": f"o{i:03d}", "n": i} for i in range(SNAPSHOT_DOCS)]
        )

    def spec(pipeline: str, uri: str) -> dict[str, Any]:
        return {
            "name": pipeline,
            "source": {"uri": uri, "database": DB, "collections": [collection]},
            "sink": {"uri": f"s3://{LAKE_BUCKET}/leak-{unique}/{pipeline}",
                     "storage_options": storage},
            "batching": {"max_records": 10},
        }  # fmt: skip

    operator = {"Authorization": f"Bearer {operator_token}"}
    admin = {"Authorization": f"Bearer {admin_token}"}
    base = f"http://127.0.0.1:{api_port}"
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:

        async def call(method: str, path: str, headers: dict[str, str], **kw: Any) -> Any:
            reply = await http.request(method, path, headers=headers, **kw)
            answers.append(reply.text)
            return reply

        async def api_up() -> bool:
            assert api.poll() is None, (tmp_path / "api.log").read_text()[-3000:]
            with contextlib.suppress(httpx.TransportError):
                return (await http.get("/readyz")).status_code == 200
            return False

        async def state_is(pipeline: str, state: str) -> bool:
            body = (await call("GET", f"/v1/pipelines/{pipeline}", operator)).json()
            assert body.get("state") != "FAILED", body
            return body.get("state") == state

        table_uri = ""

        async def lake_equals_source() -> bool:
            rows = await asyncio.to_thread(lake_table, table_uri, lake_options)
            docs = await asyncio.to_thread(
                source_documents, auth_mongo.uri("admin"), DB, collection
            )
            return compare(docs, rows).equal

        try:
            await _until(api_up, 120, "the API answers /readyz")
            created = await call(
                "POST", "/v1/pipelines", operator, json=spec(name, "env:LEAK_MONGO_URI")
            )
            assert created.status_code == 201, created.text
            table_uri = created.json()["tables"][f"{DB}.{collection}"]
            await _until(
                lake_equals_source, 400, f"snapshot in the lake\n{worker.log_text()[-3000:]}"
            )

            with auth_mongo.admin() as mongo:
                orders = mongo[DB][collection]
                orders.insert_many([{"_id": f"n{i:03d}", "n": i} for i in range(INSERTS)])
                for i in range(UPDATES):
                    orders.update_one({"_id": f"o{i:03d}"}, {"$set": {"n": -i - 1}})
                orders.delete_many({"_id": {"$in": [f"o{i:03d}" for i in range(10, 10 + DELETES)]}})
            await _until(lake_equals_source, 300, "changes in the lake")

            assert (await call("POST", f"/v1/pipelines/{name}:pause", operator)).status_code == 202
            await _until(lambda: state_is(name, "PAUSED"), 120, "paused")
            assert (await call("POST", f"/v1/pipelines/{name}:resume", operator)).status_code == 202
            await _until(lambda: state_is(name, "STREAMING"), 120, "streaming again")
            with auth_mongo.admin() as mongo:
                mongo[DB][collection].insert_one({"_id": "after-resume", "n": 0})
            await _until(lake_equals_source, 300, "the change after the resume in the lake")

            reconcile = await call("POST", f"/v1/pipelines/{name}:reconcile", operator)
            assert reconcile.status_code == 202, reconcile.text
            run = f"/v1/pipelines/{name}/reconciliations/{reconcile.json()['id']}"

            async def reconciled() -> bool:
                return (await call("GET", run, operator)).json()["status"] == "COMPLETED"

            await _until(reconciled, 300, "the reconciliation completed")

            # A pipeline whose URI holds a wrong password: its failures are written too.
            failing = await call(
                "POST", "/v1/pipelines", operator, json=spec(bad, "env:LEAK_BAD_MONGO_URI")
            )
            assert failing.status_code == 201, failing.text

            async def failing_visibly() -> bool:
                body = (await call("GET", f"/v1/pipelines/{bad}", operator)).json()
                return bool(body.get("retrying") or body.get("state") == "FAILED")

            await _until(failing_visibly, 300, "the wrong password shows as an error")

            worker_metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
            api_metrics = (await http.get("/metrics")).text
            for pipeline in (name, bad):
                await call("DELETE", f"/v1/pipelines/{pipeline}", admin)
        finally:
            for pipeline in (name, bad):
                await end_pipeline(client.get_workflow_handle(f"pipeline:{pipeline}"))
            stop_worker_process(worker)
            api.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                api.wait(30)
            if api.poll() is None:
                api.kill()

    places = {
        "worker log": worker.log_text(),
        "API log": (tmp_path / "api.log").read_text(errors="replace"),
        "Temporal server log": test_stack.stack.service("temporal").log_file.read_text(
            errors="replace"
        ),
        "worker /metrics": worker_metrics,
        "API /metrics": api_metrics,
        "audit log": (tmp_path / "audit.log").read_text(),
        "API answers": "\n".join(answers),
    }
    places.update(await _histories(stack, settings, load_payload_keys(settings).current))
    for table in (table_uri, f"s3://{LAKE_BUCKET}/leak-{unique}/{name}/_lakeward/dead_letters"):
        with contextlib.suppress(Exception):  # the dead-letter table exists only if used
            history = DeltaTable(table, storage_options=lake_options).history()
            places[f"Delta commits of {table}"] = json.dumps(history, default=str)

    # The scan is not vacuous: each place holds what the run wrote there.
    assert f'pipeline="{name}"' in places["worker /metrics"]
    assert name in places["audit log"] and name in places["worker log"]
    assert f"Delta commits of {table_uri}" in places
    decoded = "\n".join(v for k, v in places.items() if k.startswith("decrypted history"))
    assert "env:LEAK_MONGO_URI" in decoded and "env:LEAK_S3_SECRET" in decoded
    assert "Authentication failed" in places["API answers"] + decoded

    assert leaks(secret_values, places) == []


async def _histories(stack: StackSettings, settings: Settings, key: bytes) -> dict[str, str]:
    """The raw and the decrypted history of every workflow on the test's task queue."""
    raw_client = await Client.connect(stack.temporal_address)  # no codec: the bytes as stored
    codec = EncryptionCodec(key)
    places: dict[str, str] = {}
    query = f"TaskQueue = '{settings.task_queue}'"
    async for execution in raw_client.list_workflows(query):
        handle = raw_client.get_workflow_handle(execution.id, run_id=execution.run_id)
        raw = (await handle.fetch_history()).to_json()
        places[f"raw history of {execution.id}"] = raw
        decrypted = "\n".join(_decrypted_payloads(raw, codec))
        places[f"decrypted history of {execution.id}"] = decrypted
    assert len(places) >= 6, f"expected pipelines, snapshots and a reconciliation: {places.keys()}"
    return places
