"""The demo page shows an idle warning, then the end of the session (issue 16, item 11)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import expect

from tests.browser.test_demo_page import Ui, ui  # noqa: F401  (the page fixture, with our gateway)
from tests.conftest import Running, make_settings, run_gateway


@pytest.fixture
async def demo_gateway(sqlite_url: str) -> AsyncIterator[Running]:
    limits = {"idle_timeout_seconds": 1.5, "idle_warning_seconds": 1.0, "idle_grace_seconds": 0}
    demo = {
        "answer": "echo",
        "echo_delay_ms": 0,
        "limits": limits,
        "allowed_origins": ["http://127.0.0.1:*", "http://localhost:*"],
    }
    settings = make_settings(sqlite_url, agents={"demo": demo}, server={"limits_sweep_seconds": 0.05})
    async with run_gateway(settings) as running:
        yield running


async def test_the_demo_page_shows_the_idle_warning(ui: Ui) -> None:  # noqa: F811
    page = ui.page
    await ui.open()
    await ui.say("hello")
    await ui.reply_done("hello")
    warning = page.get_by_test_id("idle-warning")
    await expect(warning).to_have_count(1)
    await expect(warning).to_contain_text("Are you still there?")
    await expect(page.get_by_test_id("notice").filter(has_text="period of silence")).to_have_count(1)
    await expect(page.get_by_test_id("notice").filter(has_text="Session ended (idle_timeout)")).to_have_count(
        1
    )
