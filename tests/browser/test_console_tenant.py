"""The operator console signed in with a tenant's key, in a real headless Chromium.

Two tenants share the gateway; acme's operator sees acme's conversations (listed and
live) and can take one over, and never sees globex's, whatever arrives while the
console is open.
"""

from __future__ import annotations

import httpx
from playwright.async_api import Page, Request, expect

from tests.browser.test_console import Console, browser_page  # noqa: F401  (the fixture)
from tests.conftest import ADMIN, make_settings, run_gateway

AGENTS = {
    "acme-support": {"tenant": "acme", "answer": "echo", "echo_delay_ms": 0},
    "globex-support": {"tenant": "globex", "answer": "echo", "echo_delay_ms": 0},
}


async def say(url: str, agent: str, contact: str, name: str, text: str) -> str:
    async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {ADMIN}"}, timeout=10) as c:
        r = await c.post(
            f"/v1/agents/{agent}/messages", json={"text": text, "contact": {"id": contact, "name": name}}
        )
        assert r.status_code == 200, r.text
        return str(r.json()["sessionId"])


async def test_console_with_a_tenant_key_shows_only_that_tenant(
    sqlite_url: str,
    browser_page: tuple[Page, list[str], list[Request]],  # noqa: F811
) -> None:
    page, problems, feeds = browser_page
    async with run_gateway(make_settings(sqlite_url, agents=AGENTS)) as g:
        key, _ = await g.runtime.auth.create_key("acme-operator", "acme")
        await say(g.url, "acme-support", "c-ada", "Ada Acme", "hello from acme")
        await say(g.url, "globex-support", "c-gus", "Gus Globex", "hello from globex")
        ui = Console(page, g.url, problems)
        await ui.open()
        await ui.sign_in(key)
        assert key not in await page.evaluate("location.href")
        await expect(ui.item("Ada Acme")).to_have_count(1)
        await expect(page.get_by_test_id("session-item")).to_have_count(1)

        # Live: globex's new conversation never shows; acme's does.
        await say(g.url, "globex-support", "c-gia", "Gia Globex", "secret globex news")
        sid = await say(g.url, "acme-support", "c-bob", "Bob Acme", "news for acme")
        await expect(ui.item("Bob Acme")).to_have_count(1)
        await expect(page.get_by_test_id("session-item")).to_have_count(2)
        await expect(page.get_by_text("Globex")).to_have_count(0)
        await expect(page.get_by_text("secret globex news")).to_have_count(0)
        assert feeds and all(key not in r.url for r in feeds)

        # The tenant's operator takes over its own conversation; the audit names the key.
        await ui.item("Bob Acme").get_by_test_id("session-button").click()
        await page.get_by_role("button", name="Take over").click()
        await expect(page.get_by_role("button", name="Hand back")).to_be_visible()
        session = await g.runtime.store.session(sid)
        assert session is not None and session.paused
        events = await g.runtime.store.events_after(0, session_id=sid, types=["session.paused"])
        assert events[-1].data["by"] == "acme-operator"
