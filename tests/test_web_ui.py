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

import shutil
from collections.abc import AsyncIterator
from urllib.parse import quote

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from temporalio.client import Client, WorkflowExecutionStatus

from lakeward.settings import StackSettings
from tests.test_pipeline_workflow import (
    FakeIO,
    make_spec,
    pipeline_workers,
    start_pipeline,
    until,
)
from workflows.contracts import DATA_CONVERTER, LifecycleState
from workflows.pipeline import PipelineWorkflow

#: How long `expect` waits for the UI (a first page load compiles a large bundle on a busy
#: machine); a bound on a poll, not a timing expectation.
UI_TIMEOUT_MS = 60_000


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


async def test_web_ui_shows_the_pipeline_its_search_attributes_and_a_readable_history(
    temporal: StackSettings, client: Client, page: Page, unique: str
) -> None:
    ui = f"http://{temporal.host}:{temporal.temporal_ui_port}"
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
        finally:
            fake.flowing.set()
            if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                await handle.terminate("test teardown")
