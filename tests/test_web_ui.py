"""The Temporal Web UI of the test stack, in headless Chromium (Debian `chromium`, driven by
Playwright; no browser is downloaded).

An operator's path through the UI: filter the workflow list by a Lakeward search attribute,
find the pipeline, read its search attributes, and read its history with decoded payloads
(the run's input and the activities' results as JSON, not base64). The pipeline is a real
PipelineWorkflow on the stack's dev server with the same-name mock activities of
test_pipeline_workflow; once two batches have committed the mock apply holds the next one, so
the page shows a still history.

Playwright's `expect` polls the page until the text shows (up to its timeout); the list only
loads what visibility has indexed, so the test waits for the index through the client first.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import uvicorn
from fastapi import FastAPI
from playwright.async_api import Browser, Page, async_playwright, expect
from temporalio.client import Client, WorkflowExecutionStatus

from api.app import create_app
from lakeward.settings import Settings, StackSettings
from lakeward.tokens import Role
from tests.test_pipeline_workflow import (
    FakeIO,
    make_spec,
    pipeline_workers,
    start_pipeline,
    until,
)
from workers.encryption import encrypted_data_converter
from workflows.codec import ENCRYPTED_ENCODING
from workflows.contracts import DATA_CONVERTER, LifecycleState
from workflows.pipeline import PipelineWorkflow

#: How long `expect` waits for the UI (a first page load compiles a large bundle on a busy
#: machine); a bound on a poll, not a timing expectation.
UI_TIMEOUT_MS = 60_000
ADMIN_TOKEN = "lwt_web-ui-test-admin"


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    chromium = shutil.which("chromium")
    assert chromium, "Debian chromium is missing: run scripts/setup.sh (apt-get install chromium)"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture(scope="module")
async def client(temporal: StackSettings) -> Client:
    return await Client.connect(temporal.temporal_address, data_converter=DATA_CONVERTER)


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1600, "height": 1200})
    try:
        yield await context.new_page()
    finally:
        await context.close()


async def indexed(client: Client, query: str) -> int:
    return len([w async for w in client.list_workflows(query)])


async def open_from_list(page: Page, ui: str, query: str, workflow_id: str) -> None:
    """The workflow list filtered by `query`, then the pipeline's page from its row."""
    await page.goto(f"{ui}/namespaces/default/workflows?query={quote(query)}")
    row = page.get_by_role("link", name=workflow_id, exact=True).first
    await expect(row).to_be_visible(timeout=UI_TIMEOUT_MS)
    await row.click()
    await expect(page.get_by_role("heading", name=workflow_id)).to_be_visible(timeout=UI_TIMEOUT_MS)


async def enable_codec_credentials(page: Page, ui: str, endpoint: str) -> None:
    """What an operator does once per browser: the Web UI's Codec Server settings, with this
    endpoint and "Include cross-origin credentials" (the dev server has no flag for it)."""
    await page.goto(f"{ui}/namespaces/default/workflows")
    # data-encoder-status, or data-encoder-status-configured when the server names an endpoint
    await page.locator('[data-testid^="data-encoder-status"]').click()
    await page.get_by_text("Use my browser setting and ignore Cluster-level setting.").click()
    await page.get_by_label("Codec Server browser endpoint").fill(endpoint)
    # A switch drawn over a visually hidden checkbox: its label takes the click.
    await page.get_by_test_id("data-encoder-include-credentials").click()
    await expect(page.get_by_label("Include cross-origin credentials")).to_be_checked()
    await page.get_by_role("button", name="Apply").click()


async def paused_pipeline_shown(client: Client, page: Page, ui: str, unique: str) -> str:
    """Start a pipeline, pause it, and walk the operator's path through the UI; returns the
    page's text of the history, for checks the variants add."""
    fake = FakeIO()
    spec = make_spec(f"ui-{unique}")
    async with pipeline_workers(client, fake, unique) as io_queue:
        handle = await start_pipeline(client, spec, unique, io_queue)
        try:
            await until(
                lambda: handle.query(PipelineWorkflow.status),
                lambda s: s.progress["shop.orders"].batches >= 2,
                "two committed batches",
            )
            fake.flowing.clear()
            await handle.signal(PipelineWorkflow.pause)
            paused = f"LakewardPipeline = '{spec.name}' AND LakewardState = 'PAUSED'"
            await until(lambda: indexed(client, paused), lambda n: n == 1, "the paused pipeline")
            assert (await handle.query(PipelineWorkflow.status)).state == LifecycleState.PAUSED

            # The list, filtered by both search attributes the way an operator would.
            await open_from_list(page, ui, paused, spec.workflow_id)

            await page.get_by_test_id("search-attributes-tab").click()
            shown = page.locator("main")
            await expect(shown).to_contain_text(
                f'"LakewardPipeline": "{spec.name}"', timeout=UI_TIMEOUT_MS
            )
            await expect(shown).to_contain_text('"LakewardState": "PAUSED"')
            await expect(shown).to_contain_text('"LakewardSource": "shop:change_stream"')

            # The history: the run's input and the batches' results read as JSON.
            await page.get_by_role("tab", name="Event History").click()
            await expect(shown).to_contain_text(f'"name": "{spec.name}"', timeout=UI_TIMEOUT_MS)
            await expect(shown).to_contain_text('"database": "shop"')
            await expect(shown).to_contain_text('"uri": "/tmp/lake"')
            await expect(shown).to_contain_text("Activity Task Completed")
            await expect(shown).to_contain_text('"applied":2')
            await expect(shown).to_contain_text("Workflow Execution Signaled")
            text = await shown.inner_text()
            # Nothing shown still encoded: no payload metadata, no encrypted envelope.
            assert "anNvbi9wbGFpbg==" not in text  # base64 of json/plain
            assert "binary/encrypted" not in text
            return text
        finally:
            fake.flowing.set()
            if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                await handle.terminate("test teardown")


async def test_web_ui_shows_a_plain_pipeline_its_search_attributes_and_history(
    temporal: StackSettings, client: Client, page: Page, unique: str
) -> None:
    """Payloads stored as plain JSON: the UI reads them itself (the codec endpoint, which the
    stack configures, does not run here; the UI says so and still shows plain payloads)."""
    ui = f"http://{temporal.host}:{temporal.temporal_ui_port}"
    await paused_pipeline_shown(client, page, ui, unique)


@dataclass
class CodecApi:
    """A running API process's view: its settings, its app (for tokens) and its address, and a
    Temporal client that encrypts with the same key, as a worker does."""

    settings: Settings
    app: FastAPI
    client: Client

    @property
    def url(self) -> str:
        return f"http://{self.settings.api_host}:{self.settings.api_port}"

    def token(self, role: Role, name: str) -> str:
        _, token = self.app.state.authenticator.store.create(name, role)
        return str(token)


@asynccontextmanager
async def serving_codec_api(temporal: StackSettings, folder: Path) -> AsyncIterator[CodecApi]:
    """The API, with a fresh payload key, served by uvicorn on the port the stack's Web UI calls
    for decoding (`--ui-codec-endpoint`)."""
    settings = Settings(
        temporal_address=temporal.temporal_address,
        payload_key=base64.b64encode(os.urandom(32)).decode(),
        codec_cors_origins=[f"http://{temporal.host}:{temporal.temporal_ui_port}"],
        api_host=temporal.host,
        api_port=temporal.api_port,
        admin_token=ADMIN_TOKEN,
        admin_token_file=folder / "admin.token",
        api_tokens_file=folder / "api-tokens.json",
        audit_log=folder / "audit.log",
    )
    encrypted = await Client.connect(
        settings.temporal_address, data_converter=encrypted_data_converter(settings)
    )
    app = create_app(settings, client=encrypted)
    server = uvicorn.Server(
        uvicorn.Config(app, host=settings.api_host, port=settings.api_port, log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    try:
        await until(
            lambda: asyncio.sleep(0, server.started or serving.done()),
            bool,
            "the API serving",
            attempts=2400,
        )
        assert server.started, f"the API did not start on {settings.api_host}:{settings.api_port}"
        yield CodecApi(settings, app, encrypted)
    finally:
        server.should_exit = True
        await serving


@pytest.fixture
async def codec_api(temporal: StackSettings, tmp_path: Path) -> AsyncIterator[CodecApi]:
    async with serving_codec_api(temporal, tmp_path) as api:
        yield api


async def test_web_ui_decodes_an_encrypted_history_through_the_api_codec(
    temporal: StackSettings, client: Client, codec_api: CodecApi, page: Page, unique: str
) -> None:
    ui = f"http://{temporal.host}:{temporal.temporal_ui_port}"

    # The operator signs in to the codec endpoint with a viewer token (an HttpOnly cookie)...
    await page.goto(f"{codec_api.url}/codec/login")
    await page.get_by_label("API token").fill(codec_api.token(Role.viewer, f"ui-{unique}"))
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_text("Signed in as")).to_be_visible(timeout=UI_TIMEOUT_MS)
    # ...and lets the Web UI send it: the codec settings' "Include cross-origin credentials".
    await enable_codec_credentials(page, ui, f"{codec_api.url}/codec")

    text = await paused_pipeline_shown(codec_api.client, page, ui, unique)
    assert "Codec Server could not connect" not in text

    # What Temporal stores is ciphertext (read with the plain client, which has no key): the UI
    # could only have read it through the codec endpoint.
    [started] = [
        e
        async for e in client.get_workflow_handle(f"pipeline:ui-{unique}").fetch_history_events()
        if e.HasField("workflow_execution_started_event_attributes")
    ]
    [stored] = started.workflow_execution_started_event_attributes.input.payloads
    assert stored.metadata["encoding"] == ENCRYPTED_ENCODING
    assert f"ui-{unique}".encode() not in stored.data
