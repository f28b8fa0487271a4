"""A phone call in the operator console (real headless Chromium): the live transcript keeps
only what the caller heard after an interruption, and the operator hangs the call up."""

from __future__ import annotations

import json

from playwright.async_api import Page, Request, expect

from tests.browser.test_console import AGENT_MSG, Console, browser_page  # noqa: F401 (fixture)
from tests.twilio.helpers import twilio_gateway
from tests.twilio.relay_client import connected_call


async def test_operator_watches_a_call_and_hangs_it_up(
    sqlite_url: str,
    browser_page: tuple[Page, list[str], list[Request]],  # noqa: F811
) -> None:
    page, _problems, _feeds = browser_page
    async with twilio_gateway(sqlite_url, echo_delay_ms=60) as (g, _):
        console = Console(page, g.url)
        await console.open()
        await console.sign_in()
        async with connected_call(g, "CA" + "9" * 32) as (relay, sid):
            item = page.locator(f'[data-testid=session-item][data-session-id="{sid}"]')
            await expect(item).to_be_visible()
            await item.get_by_test_id("session-button").click()
            await expect(page.get_by_test_id("hang-up")).to_be_visible()
            await expect(page.get_by_test_id("take-over")).to_be_visible()

            await relay.prompt("please tell me about the opening hours of the shop today")
            await relay.recv()
            await relay.recv()
            await relay.send(
                {
                    "type": "interrupt",
                    "utteranceUntilInterrupt": "please tell",
                    "durationUntilInterruptMs": 500,
                }
            )
            reply = page.locator(AGENT_MSG).last
            await expect(reply).to_have_attribute("data-interrupted", "true")
            await expect(reply.get_by_test_id("message-text")).to_have_text("please tell")

            await page.get_by_test_id("hang-up").click()
            end = await relay.recv()
            while end["type"] == "text":
                end = await relay.recv()
            assert end["type"] == "end" and json.loads(end["handoffData"])["action"] == "hangup"
            await expect(page.get_by_test_id("conversation-status")).to_have_text("ended (closed)")
            await expect(page.get_by_test_id("hang-up")).to_be_hidden()
