"""The console shows a coexistence echo (issue 16, item 9) in real headless Chromium: the
business's message from the WhatsApp Business app, as a human message, and the pause."""

from __future__ import annotations

from playwright.async_api import Page, Request, expect

from tests.browser.test_console import (  # noqa: F401  (fixtures)
    HUMAN_MSG,
    MESSAGE,
    Console,
    browser_page,
    gateway_on,
    graph,
)
from tests.conftest import free_port
from tests.fakes.graph_server import FakeGraph
from tests.whatsapp.test_channel import post, text_webhook, wait_for
from tests.whatsapp.test_echoes import echo


async def test_the_console_shows_an_echo_as_a_human_message_and_the_pause(
    sqlite_url: str,
    graph: FakeGraph,  # noqa: F811
    browser_page: tuple[Page, list[str], list[Request]],  # noqa: F811
) -> None:
    page, problems, _feeds = browser_page
    async with gateway_on(free_port(), sqlite_url, graph) as g:
        ui = Console(page, g.url, problems)
        await ui.open()
        await ui.sign_in()
        await post(g, text_webhook("wamid.CE1", "Do you have it in blue?"))
        await wait_for(lambda: len(graph.sent) == 1)
        item = ui.item("Sheena Nelson")
        await expect(item).to_have_count(1)
        await item.get_by_test_id("session-button").click()
        await expect(page.locator(MESSAGE)).to_have_count(2)
        # The owner answers from the WhatsApp Business app on the same number.
        await post(g, echo("wamid.CE2", "Yes, blue is in stock. — Maria"))
        human = page.locator(HUMAN_MSG)
        await expect(human).to_have_count(1)
        await expect(human.get_by_test_id("message-text")).to_have_text("Yes, blue is in stock. — Maria")
        await expect(human.get_by_test_id("message-who")).to_have_text("Human · WhatsApp Business app")
        await expect(page.get_by_test_id("conversation-paused")).to_be_visible()
        await expect(item.get_by_test_id("paused-badge")).to_be_visible()
        assert len(graph.sent) == 1  # nothing was sent for the echo
