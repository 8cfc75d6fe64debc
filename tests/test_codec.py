"""Payload encryption (invariant 7): the codec, its keys, the history it leaves, its endpoint.

Unit tests of the AES-GCM codec and of key loading need no servers. The end-to-end test runs a
pipeline with a real encrypting worker on the test stack, then reads the raw history with a
client that has no codec: no connection string, key or document may be readable there, while
the same history decoded with the key does hold them (so the search could find a leak).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from google.protobuf import json_format
from google.protobuf.message import Message
from pymongo import MongoClient
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import History
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from api.app import create_app
from api.codec import CODEC_COOKIE
from lakeward.keys import PayloadKeyError, load_payload_keys, new_key_text
from lakeward.settings import Settings
from lakeward.stack.servers import venv_bin
from lakeward.tokens import Role
from tests.test_slice import _eventually, _lake_rows
from workers.encryption import encrypted_data_converter
from workers.main import build_workers
from workflows.codec import (
    ENCRYPTED_ENCODING,
    KEY_ID_METADATA,
    EncryptionCodec,
    PayloadDecryptionError,
    UnknownPayloadKeyError,
    encrypted_converter,
    key_id,
)
from workflows.contracts import DATA_CONVERTER

ADMIN_TOKEN = "lwt_codec-test-admin"
OLD_KEY = os.urandom(32)
NEW_KEY = os.urandom(32)


def _json_payload(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=f'"{text}"'.encode())


# --- the codec ---------------------------------------------------------------------------------


async def test_encrypted_payloads_round_trip_and_hide_their_content() -> None:
    codec = EncryptionCodec(NEW_KEY)
    originals = [_json_payload("mongodb://orders-db.internal:27017"), _json_payload("")]
    sealed = await codec.encode(originals)
    for payload in sealed:
        assert payload.metadata["encoding"] == ENCRYPTED_ENCODING
        assert payload.metadata[KEY_ID_METADATA] == key_id(NEW_KEY).encode()
        assert b"orders-db" not in payload.SerializeToString()
        assert b"json/plain" not in payload.SerializeToString()  # inner metadata sealed too
    assert sealed[0].data != (await codec.encode(originals[:1]))[0].data  # a fresh nonce each
    assert await codec.decode(sealed) == originals


async def test_payloads_that_were_never_encrypted_decode_unchanged() -> None:
    plain = [_json_payload("written before encryption was turned on")]
    assert await EncryptionCodec(NEW_KEY).decode(plain) == plain


async def test_after_a_rotation_old_payloads_decrypt_and_new_ones_use_the_new_key() -> None:
    before = await EncryptionCodec(OLD_KEY).encode([_json_payload("before")])
    rotated = EncryptionCodec(NEW_KEY, previous=[OLD_KEY])
    assert await rotated.decode(before) == [_json_payload("before")]
    after = await rotated.encode([_json_payload("after")])
    assert after[0].metadata[KEY_ID_METADATA] == key_id(NEW_KEY).encode()
    assert rotated.key_id == key_id(NEW_KEY) != key_id(OLD_KEY)
    assert set(rotated.known_key_ids) == {key_id(NEW_KEY), key_id(OLD_KEY)}


async def test_a_payload_under_an_unknown_key_fails_naming_the_key_id() -> None:
    sealed = await EncryptionCodec(OLD_KEY).encode([_json_payload("x")])
    with pytest.raises(UnknownPayloadKeyError) as caught:
        await EncryptionCodec(NEW_KEY).decode(sealed)
    message = str(caught.value)
    assert key_id(OLD_KEY) in message
    assert "LAKEWARD_PAYLOAD_PREVIOUS_KEYS" in message
    for key in (OLD_KEY, NEW_KEY):
        assert base64.b64encode(key).decode() not in message


@pytest.mark.parametrize("where", ["ciphertext", "nonce", "tag", "key id", "truncated"])
async def test_tampered_payloads_are_refused(where: str) -> None:
    codec = EncryptionCodec(NEW_KEY, previous=[OLD_KEY])
    [sealed] = await codec.encode([_json_payload("amount: 10")])
    data = bytearray(sealed.data)
    if where == "key id":  # relabelled as sealed by another key this process knows
        sealed.metadata[KEY_ID_METADATA] = key_id(OLD_KEY).encode()
    elif where == "truncated":
        sealed.data = bytes(data[:5])
    else:
        data[{"nonce": 0, "ciphertext": 14, "tag": -1}[where]] ^= 0x01
        sealed.data = bytes(data)
    with pytest.raises(PayloadDecryptionError, match="failed authentication"):
        await codec.decode([sealed])


def test_keys_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        EncryptionCodec(b"short")


async def test_the_converter_seals_values_and_failure_messages() -> None:
    converter = encrypted_converter(EncryptionCodec(NEW_KEY))
    [payload] = await converter.encode([{"uri": "mongodb://orders-db.internal/"}])
    assert b"orders-db" not in payload.SerializeToString()
    assert await converter.decode([payload]) == [{"uri": "mongodb://orders-db.internal/"}]

    failure = Failure()
    error = ApplicationError("cannot reach orders-db.internal:27017", type="SourceUnreachable")
    await converter.encode_failure(error, failure)
    assert b"orders-db" not in failure.SerializeToString()
    assert failure.message == "Encoded failure"
    stored = Failure()
    stored.CopyFrom(failure)  # decoding works in place
    decoded = await converter.decode_failure(failure)
    assert "orders-db.internal" in str(decoded)
    # A process without the codec sees only the sealed failure.
    assert "orders-db" not in str(await DATA_CONVERTER.decode_failure(stored))


async def test_a_long_failure_chain_stays_under_temporals_limit_and_keeps_its_message() -> None:
    """Temporal keeps a retrying activity's last failure only under 4 KB (else the API's
    `retrying` read "Failure exceeds size limit."): messages, stack traces and causes are cut."""

    def fail(depth: int) -> None:
        if depth == 0:
            raise ValueError("root cause " + "r" * 3000)
        try:
            fail(depth - 1)
        except Exception as exc:
            raise RuntimeError(f"MongoDB refused the login at level {depth} " + "y" * 2000) from exc

    with pytest.raises(RuntimeError) as raised:
        fail(6)
    converter = encrypted_converter(EncryptionCodec(NEW_KEY))
    failure = Failure()
    await converter.encode_failure(raised.value, failure)
    assert failure.ByteSize() < 4096
    decoded = await converter.decode_failure(failure)
    assert "MongoDB refused the login at level 6" in str(decoded)
    assert decoded.__cause__ is not None and "level 5" in str(decoded.__cause__)


# --- keys --------------------------------------------------------------------------------------


def test_the_embedded_default_generates_one_private_key_and_reuses_it(tmp_path) -> None:
    settings = Settings(payload_key="", payload_key_file=tmp_path / "lakeward" / "payload.key")
    with ThreadPoolExecutor(8) as pool:  # a worker and the API starting at the same moment
        keys = list(pool.map(lambda _: load_payload_keys(settings), range(8)))
    assert len({k.current for k in keys}) == 1
    assert len(keys[0].current) == 32
    mode = stat.S_IMODE(settings.payload_key_file.stat().st_mode)
    assert mode == 0o600, oct(mode)
    assert [p.name for p in settings.payload_key_file.parent.iterdir()] == ["payload.key"]
    assert load_payload_keys(settings).current == keys[0].current
    assert "hidden" in repr(keys[0]) and str(keys[0].current) not in repr(keys[0])


def test_keys_come_from_settings_and_secret_references(tmp_path, monkeypatch) -> None:
    current, old = new_key_text(), new_key_text()
    monkeypatch.setenv("TEST_CODEC_OLD_KEY", old)
    (tmp_path / "current.key").write_text(current + "\n")
    settings = Settings(
        payload_key=f"file:{tmp_path / 'current.key'}",
        payload_previous_keys=["env:TEST_CODEC_OLD_KEY"],
        payload_key_file=tmp_path / "unused.key",
    )
    keys = load_payload_keys(settings)
    assert keys.current == base64.b64decode(current)
    assert keys.previous == (base64.b64decode(old),)
    assert not settings.payload_key_file.exists()


@pytest.mark.parametrize(
    ("value", "complaint"),
    [("not base64!", "not base64"), (base64.b64encode(b"16 bytes exactly").decode(), "16 bytes"),
     ("env:TEST_CODEC_UNSET_VARIABLE", "TEST_CODEC_UNSET_VARIABLE")],
)  # fmt: skip
def test_an_unusable_key_setting_says_which_and_why(value: str, complaint: str) -> None:
    with pytest.raises(PayloadKeyError) as caught:
        load_payload_keys(Settings(payload_key=value))
    assert "LAKEWARD_PAYLOAD_KEY" in str(caught.value) and complaint in str(caught.value)
    if not value.startswith("env:"):
        assert value not in str(caught.value)


# --- end to end --------------------------------------------------------------------------------


@dataclass
class EncryptedPipeline:
    workflow_id: str
    marker_uri: str
    document_marker: str
    key: bytes
    settings: Settings
    app: FastAPI
    http: httpx.AsyncClient  # sends the admin token
    viewer_token: str
    raw_client: Client


def _payloads(message: Message, path: str = "") -> Iterator[tuple[str, Payload]]:
    """Every Payload inside a history event, with the field path that leads to it."""
    if isinstance(message, Payload):
        yield path, message
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            if field.message_type.fields_by_name["value"].message_type:
                for key, item in value.items():
                    yield from _payloads(item, f"{path}.{field.name}[{key}]")
        elif field.is_repeated:
            for i, item in enumerate(value):
                yield from _payloads(item, f"{path}.{field.name}[{i}]")
        else:
            yield from _payloads(value, f"{path}.{field.name}")


#: Payloads Temporal keeps readable by design: search attributes (the server indexes them) and
#: the SDK's `workflow.patched` markers (patch ids only). docs/encryption.md lists them.
_VISIBLE_BY_DESIGN = (".search_attributes.", ".details[patch-data].")


@pytest.fixture(scope="module")
async def encrypted_pipeline(core_stack, tmp_path_factory) -> AsyncIterator[EncryptedPipeline]:
    """A pipeline run to STOPPED by a worker and an API that encrypt with a test key."""
    unique = os.urandom(5).hex()
    tmp = tmp_path_factory.mktemp("codec")
    key = os.urandom(32)
    settings = Settings(
        temporal_address=core_stack.temporal_address,
        kafka_bootstrap=core_stack.kafka_bootstrap,
        task_queue=f"wf-{unique}",
        io_task_queue=f"io-{unique}",
        topic_prefix=f"t{unique}",
        payload_key=base64.b64encode(key).decode(),
        codec_cors_origins=["http://127.0.0.1:18233"],
        admin_token=ADMIN_TOKEN,
        api_tokens_file=tmp / "api-tokens.json",
        audit_log=tmp / "audit.log",
    )
    client = await Client.connect(
        settings.temporal_address, data_converter=encrypted_data_converter(settings)
    )
    raw_client = await Client.connect(settings.temporal_address)  # no codec: what's stored
    executor = ThreadPoolExecutor(max_workers=settings.io_max_concurrent)
    workers, activities = build_workers(client, settings, executor)
    runs = [asyncio.create_task(w.run()) for w in workers]
    app = create_app(settings, client=client)
    db, name = f"codec_{unique}", f"codec-{unique}"
    marker_uri = f"{core_stack.mongo_uri}&appName=conn-marker-{unique}"
    document_marker = f"doc-marker-{unique}"
    try:
        _, viewer_token = app.state.authenticator.store.create("ui-viewer", Role.viewer)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://lakeward",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as http:
            with MongoClient(core_stack.mongo_uri) as mongo:
                mongo[db].orders.insert_one({"_id": "before", "note": document_marker})
            spec = {
                "name": name,
                "source": {"uri": marker_uri, "database": db, "collections": ["orders"]},
                "sink": {"uri": str(tmp / "lake")},
            }
            created = await http.post("/v1/pipelines", json=spec)
            assert created.status_code == 201, created.text
            table_uri = created.json()["tables"][f"{db}.orders"]
            with MongoClient(core_stack.mongo_uri) as mongo:
                mongo[db].orders.insert_one({"_id": "after", "note": document_marker})
            await _eventually(lambda: {"before", "after"} <= set(_lake_rows(table_uri)))
            assert (await http.delete(f"/v1/pipelines/{name}")).status_code == 202
            deadline = time.monotonic() + 60
            while (await http.get(f"/v1/pipelines/{name}")).json()["state"] != "STOPPED":
                assert time.monotonic() < deadline, "pipeline not STOPPED 60 s after stop"
                await asyncio.sleep(0.25)
            yield EncryptedPipeline(
                workflow_id=f"pipeline:{name}",
                marker_uri=marker_uri,
                document_marker=document_marker,
                key=key,
                settings=settings,
                app=app,
                http=http,
                viewer_token=viewer_token,
                raw_client=raw_client,
            )
    finally:
        async for execution in client.list_workflows(f"TaskQueue = 'wf-{unique}'"):
            if execution.status == WorkflowExecutionStatus.RUNNING:
                with contextlib.suppress(RPCError):
                    await client.get_workflow_handle(execution.id).terminate("test over")
        await asyncio.gather(*(w.shutdown() for w in workers))
        await asyncio.gather(*runs, return_exceptions=True)
        activities.close()
        executor.shutdown(wait=False)


async def test_raw_history_holds_no_connection_string_key_or_document(encrypted_pipeline):
    run = encrypted_pipeline
    history = await run.raw_client.get_workflow_handle(run.workflow_id).fetch_history()
    raw = history.to_json().encode() + b"\n".join(
        e.SerializeToString() for e in history.events
    )  # protobuf bytes as stored, and the JSON (base64) form the Web UI receives
    secrets = {
        "connection string": run.marker_uri.split("appName=")[1].encode(),
        "key": run.key,
        "key (base64)": base64.b64encode(run.key),
        "document": run.document_marker.encode(),
    }
    for what, secret in secrets.items():
        assert secret not in raw, f"the {what} is readable in raw history"

    found = [(path, p) for event in history.events for path, p in _payloads(event)]
    payloads = [p for path, p in found if not any(v in path for v in _VISIBLE_BY_DESIGN)]
    assert len(payloads) >= 5  # the input, activity inputs and results
    not_sealed = [path for path, p in found if p.metadata.get("encoding") != ENCRYPTED_ENCODING
                  and not any(v in path for v in _VISIBLE_BY_DESIGN)]  # fmt: skip
    assert not not_sealed, f"payloads stored without encryption: {not_sealed}"

    # The control: decoded with the key, the same history does carry the connection string,
    # so the search above would have found it in plain payloads.
    codec = EncryptionCodec(run.key)
    decoded = b"".join(p.SerializeToString() for p in await codec.decode(payloads))
    assert secrets["connection string"] in decoded


def _browser(run: EncryptedPipeline) -> httpx.AsyncClient:
    """A client that sends what a browser on the Web UI's page sends: no token, cookies kept."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=run.app), base_url="http://127.0.0.1:8000"
    )


async def _started_input(run: EncryptedPipeline) -> dict:
    """The workflow's input as the Web UI fetches it from history (protobuf JSON, sealed)."""
    history = await run.raw_client.get_workflow_handle(run.workflow_id).fetch_history()
    [started] = [
        e for e in history.events if e.HasField("workflow_execution_started_event_attributes")
    ]
    return json_format.MessageToDict(started.workflow_execution_started_event_attributes.input)


async def test_the_codec_endpoint_decodes_history_payloads_for_a_viewer(encrypted_pipeline):
    run = encrypted_pipeline
    body = await _started_input(run)
    origin = run.settings.codec_cors_origins[0]
    viewer = {"Origin": origin, "X-Namespace": "default",
              "Authorization": f"Bearer {run.viewer_token}"}  # fmt: skip

    async with _browser(run) as browser:  # the preflight the Web UI's fetch causes
        preflight = await browser.options(
            "/codec/decode",
            headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "content-type,x-namespace"},
        )  # fmt: skip
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == origin
    assert preflight.headers["access-control-allow-credentials"] == "true"
    assert "x-namespace" in preflight.headers["access-control-allow-headers"].lower()

    response = await run.http.post("/codec/decode", json=body, headers=viewer)
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == origin
    decoded = json_format.ParseDict(response.json(), Payloads()).payloads
    assert decoded[0].metadata["encoding"] == b"json/plain"
    assert run.marker_uri.encode() in decoded[0].data

    # Encoding needs an operator; encode then decode gives the payload back.
    refused = await run.http.post("/codec/encode", json=response.json(), headers=viewer)
    assert refused.status_code == 403, refused.text
    encoded = await run.http.post("/codec/encode", json=response.json())
    assert encoded.status_code == 200, encoded.text
    sealed = encoded.json()["payloads"][0]
    assert sealed["metadata"]["encoding"] == base64.b64encode(ENCRYPTED_ENCODING).decode()
    again = await run.http.post("/codec/decode", json=encoded.json())
    assert again.json() == response.json()


async def test_a_browser_signs_in_for_the_codec_with_a_cookie(encrypted_pipeline):
    run = encrypted_pipeline
    body = await _started_input(run)
    origin = run.settings.codec_cors_origins[0]
    async with _browser(run) as browser:
        anonymous = await browser.post("/codec/decode", json=body, headers={"Origin": origin})
        assert anonymous.status_code == 401
        # The refusal carries CORS headers, so the Web UI can tell it from a network error.
        assert anonymous.headers["access-control-allow-origin"] == origin

        assert (await browser.get("/codec/login")).headers["content-type"].startswith("text/html")
        wrong = await browser.post("/codec/login", data={"token": "lwt_not-a-token"})
        assert wrong.status_code == 401 and not browser.cookies

        signed_in = await browser.post("/codec/login", data={"token": run.viewer_token})
        assert signed_in.status_code == 200, signed_in.text
        cookie = signed_in.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/codec" in cookie
        assert run.viewer_token not in signed_in.text

        decoded = await browser.post("/codec/decode", json=body, headers={"Origin": origin})
        assert decoded.status_code == 200, decoded.text
        assert decoded.headers["access-control-allow-credentials"] == "true"
        encode = await browser.post("/codec/encode", json=decoded.json())
        assert encode.status_code == 403  # a viewer's cookie does not encode
        # The cookie is for the codec only: the pipeline API still wants the header.
        browser.cookies.set(CODEC_COOKIE, run.viewer_token, path="/")
        assert (await browser.get("/v1/pipelines")).status_code == 401
        browser.cookies.clear()

        await browser.post("/codec/login", data={"token": run.viewer_token})
        await browser.post("/codec/logout")
        after = await browser.post("/codec/decode", json=body)
        assert after.status_code == 401


async def test_the_codec_endpoint_refuses_other_origins_and_foreign_keys(encrypted_pipeline):
    run = encrypted_pipeline
    async with _browser(run) as browser:
        preflight = await browser.options(
            "/codec/decode",
            headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in preflight.headers
        assert preflight.status_code == 400
        # Only the codec routes speak CORS.
        origin = run.settings.codec_cors_origins[0]
        other = await browser.get("/healthz", headers={"Origin": origin})
        assert "access-control-allow-origin" not in other.headers

    foreign_key = os.urandom(32)
    sealed = await EncryptionCodec(foreign_key).encode([_json_payload("x")])
    body = json_format.MessageToDict(Payloads(payloads=sealed))
    response = await run.http.post("/codec/decode", json=body)
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert key_id(foreign_key) in response.json()["detail"]

    garbage = await run.http.post("/codec/decode", json={"payloads": "not a list"})
    assert garbage.status_code == 422, garbage.text
    assert garbage.headers["content-type"] == "application/problem+json"


async def test_a_lakeward_api_process_decodes_history_for_the_temporal_cli(
    encrypted_pipeline, core_stack, tmp_path
):
    """`lakeward api` as its own process, with the key in its environment, serves the codec
    endpoint to Temporal's own client: `temporal workflow show --codec-endpoint`."""
    run = encrypted_pipeline
    base = f"http://{core_stack.host}:{core_stack.api_port}"
    env = {
        **os.environ,
        "LAKEWARD_TEMPORAL_ADDRESS": core_stack.temporal_address,
        "LAKEWARD_PAYLOAD_KEY": base64.b64encode(run.key).decode(),
        "LAKEWARD_PAYLOAD_KEY_FILE": str(tmp_path / "unused.key"),
        "LAKEWARD_ADMIN_TOKEN": ADMIN_TOKEN,
        "LAKEWARD_API_TOKENS_FILE": str(run.settings.api_tokens_file),
        "LAKEWARD_AUDIT_LOG": str(tmp_path / "audit.log"),
    }
    lakeward = Path(sys.executable).parent / "lakeward"
    log_path = tmp_path / "api.log"
    with log_path.open("wb") as log:
        api = subprocess.Popen(
            [str(lakeward), "api", "--host", core_stack.host, "--port", str(core_stack.api_port)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert api.poll() is None, log_path.read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "lakeward api not ready within 60 s"
            await asyncio.sleep(0.25)
        show = [str(venv_bin("temporal")), "workflow", "show", "--workflow-id", run.workflow_id,
                "--address", core_stack.temporal_address, "--output", "json"]  # fmt: skip
        marker = run.marker_uri.split("appName=")[1]
        plain = await asyncio.to_thread(
            subprocess.run, show, capture_output=True, text=True, timeout=120
        )
        assert plain.returncode == 0, plain.stderr
        assert marker not in plain.stdout
        decoded = await asyncio.to_thread(
            subprocess.run,
            [*show, "--codec-endpoint", f"{base}/codec",
             "--codec-auth", f"Bearer {run.viewer_token}"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert decoded.returncode == 0, decoded.stderr
        history = json_format.Parse(decoded.stdout, History(), ignore_unknown_fields=True)
        data = b"".join(p.data for event in history.events for _, p in _payloads(event))
        assert marker.encode() in data
        assert run.document_marker.encode() not in data  # documents never enter history
    finally:
        api.terminate()  # our own process, by its handle
        try:
            api.wait(30)
        except subprocess.TimeoutExpired:
            api.kill()
            api.wait(30)
