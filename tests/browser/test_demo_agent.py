"""The demo page with agents that are not called `demo`, in headless Chromium.

`/` uses the first agent that allows the page's origin (or `?agent=`), and its texts
follow that agent; with no agent for the origin it says what to do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Page, async_playwright, expect

from tests.conftest import Running, make_settings, run_gateway
from tests.services import CHROMIUM_ARGS, need_chromium

expect.set_options(timeout=10_000)


@pytest.fixture
async def gateway(sqlite_url: str) -> AsyncIterator[Running]:
    settings = make_settings(
        sqlite_url,
        agents={
            # Listed first, but only for another site: not this page's agent.
            "partner": {"answer": "echo", "allowed_origins": ["https://partner.example"]},
            "support": {"answer": "echo", "echo_delay_ms": 0, "allowed_origins": ["http://127.0.0.1:*"]},
            "sales": {"answer": "process", "allowed_origins": ["http://127.0.0.1:*"]},
        },
    )
    async with run_gateway(settings) as running:
        yield running


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    chromium = need_chromium()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, timeout=15_000)
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 720})
            yield await context.new_page()
        finally:
            await browser.close()


async def test_the_page_uses_the_first_agent_that_allows_its_origin(gateway: Running, page: Page) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(gateway.url + "/")
    await expect(page.get_by_test_id("agent-name")).to_have_text("support")
    await expect(page.get_by_label("Message")).to_have_attribute(
        "placeholder", "Say something to support; it echoes it back…"
    )
    await expect(page.get_by_test_id("chat-status")).to_have_attribute("data-state", "open")
    await expect(page.get_by_test_id("feed-status")).to_have_attribute("data-state", "open")
    await page.get_by_label("Message").fill("hello support")
    await page.get_by_label("Message").press("Enter")
    reply = page.locator("[data-testid=msg][data-role=assistant][data-state=done]")
    await expect(reply).to_have_count(1)
    await expect(reply).to_contain_text("hello support")
    await expect(page.locator("body")).not_to_contain_text("unknown_agent")
    # Nothing on the page speaks of an agent called demo, or of left and right.
    header = await page.locator("header").inner_text()
    assert "demo" not in header.replace("Switchboard demo", "") and " left" not in header
    async with gateway.client() as c:
        sessions = (await c.get("/v1/sessions", params={"agent": "support"})).json()["sessions"]
    assert len(sessions) == 1
    assert errors == []


async def test_agent_in_the_query_wins_and_the_texts_follow_it(gateway: Running, page: Page) -> None:
    await page.goto(gateway.url + "/?agent=sales")
    await expect(page.get_by_test_id("agent-name")).to_have_text("sales")
    await expect(page.get_by_label("Message")).to_have_attribute("placeholder", "Say something to sales…")
    await expect(page.get_by_test_id("feed-status")).to_have_attribute("data-state", "open")


async def test_no_agent_for_the_origin_is_said_once_with_what_to_do(gateway: Running, page: Page) -> None:
    # localhost is another origin than 127.0.0.1: no agent lists it.
    url = gateway.url.replace("127.0.0.1", "localhost") + "/"
    await page.goto(url)
    await expect(page.get_by_test_id("agent-name")).to_have_text("none")
    await expect(page.get_by_test_id("chat-status")).to_have_attribute("data-state", "error")
    origin = url.rstrip("/")
    await expect(page.get_by_test_id("transcript")).to_contain_text(
        f'no agent allows this page\'s origin ({origin}): add "{origin}"'
    )
    await page.wait_for_timeout(500)
    tokens = await page.evaluate("performance.getEntriesByType('resource').map(e => e.name)")
    assert not [t for t in tokens if t.endswith("/v1/tokens")]


async def test_the_console_lists_a_demo_tab_only_once_it_is_written_in(gateway: Running, page: Page) -> None:
    """Opening the demo page starts a chat session; the console shows it from its first
    message, named by channel (not its raw id twice)."""
    from tests.conftest import ADMIN

    await page.goto(gateway.url + "/")
    await expect(page.get_by_test_id("chat-status")).to_have_attribute("data-state", "open")
    empty_id = await page.get_by_test_id("session-id").inner_text()

    console = await page.context.new_page()
    await console.goto(gateway.url + "/console")
    await console.get_by_label("API key").fill(ADMIN)
    await console.get_by_role("button", name="Sign in").click()
    await expect(console.get_by_test_id("feed-status")).to_have_attribute("data-state", "open")
    await console.wait_for_timeout(500)
    await expect(console.get_by_test_id("session-item")).to_have_count(0)

    await page.get_by_label("Message").fill("now it is a conversation")
    await page.get_by_label("Message").press("Enter")
    item = console.get_by_test_id("session-item")
    await expect(item).to_have_count(1)
    name = f"Web chat …{empty_id[-8:]}"
    await expect(item.get_by_test_id("session-contact")).to_have_text(name)
    await item.get_by_test_id("session-button").click()
    await expect(console.get_by_test_id("conversation-session")).to_have_text(empty_id)
    assert (await console.locator("body").inner_text()).count(empty_id) == 1
