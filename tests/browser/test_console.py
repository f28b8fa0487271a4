"""The operator console (`/console`) in a real headless Chromium (Debian's; never a downloaded one).

A real gateway with a WhatsApp number (agent `support`, answered by `echo`) runs against the
fake Graph API; the test posts signed inbound webhooks, and an operator signs in, watches the
conversation arrive, takes it over, answers as a human and hands it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, Request, Route, async_playwright, expect

from tests.conftest import ADMIN, Running, free_port, run_gateway
from tests.fakes.graph_server import FakeGraph
from tests.services import CHROMIUM_ARGS, need_chromium
from tests.whatsapp.test_channel import (
    ENV,
    post,
    sent_wamid,
    settings,
    status_webhook,
    text_webhook,
    wait_for,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"
WAIT_MS = 15_000
CONTACT = "16505551234"  # the sender of text_webhook(); its profile name is Sheena Nelson

expect.set_options(timeout=10_000)

MESSAGE = "[data-testid=message]"
AGENT_MSG = f"{MESSAGE}[data-source=agent]"
HUMAN_MSG = f"{MESSAGE}[data-source=human]"

# Records every distinct text of the next agent reply in the transcript, as the DOM changes.
WATCH_REPLY = """() => {
  window.__replyTexts = [];
  const t = document.getElementById('transcript');
  const old = new Set(t.querySelectorAll('[data-testid=message]'));
  const record = () => {
    const replies = [...t.querySelectorAll('[data-testid=message][data-source=agent]')]
      .filter(r => !old.has(r));
    if (!replies.length) return;
    const text = replies[replies.length - 1].querySelector('.text').textContent;
    const seen = window.__replyTexts;
    if (seen[seen.length - 1] !== text) seen.push(text);
  };
  new MutationObserver(record).observe(t, {subtree: true, childList: true, characterData: true});
}"""


def gateway_on(
    port: int, sqlite_url: str, graph: FakeGraph
) -> contextlib.AbstractAsyncContextManager[Running]:
    """A gateway with a WhatsApp number (agent `support`, echo) on a fixed port, so it can restart."""
    return run_gateway(settings(sqlite_url, graph, echo_delay_ms=20), env=ENV, port=port)


@dataclass
class Console:
    page: Page
    base: str
    problems: list[str] = field(default_factory=list)
    feed_requests: list[Request] = field(default_factory=list)

    async def open(self) -> None:
        # `/console` (gateway/api/ops.py); the same file is also served under /static/.
        async with httpx.AsyncClient(base_url=self.base, timeout=5) as c:
            r = await c.get("/console")
        ok = r.status_code == 200 and "/static/console.js" in r.text
        await self.page.goto(self.base + ("/console" if ok else "/static/console.html"))

    async def sign_in(self, key: str = ADMIN) -> None:
        page = self.page
        await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        await page.get_by_label("API key").fill(key)
        await page.get_by_role("button", name="Sign in").click()
        await self.live()

    async def live(self) -> None:
        status = self.page.get_by_test_id("feed-status")
        await expect(status).to_have_attribute("data-state", "open")
        await expect(status).to_have_text("live")

    def item(self, text: str) -> Any:
        return self.page.get_by_test_id("session-item").filter(has_text=text)


@pytest.fixture
async def graph() -> AsyncIterator[FakeGraph]:
    async with FakeGraph(token="test-token") as fake:
        yield fake


@pytest.fixture
async def browser_page() -> AsyncIterator[tuple[Page, list[str], list[Request]]]:
    chromium = need_chromium()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, timeout=WAIT_MS)
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 800})
            page = await context.new_page()
            page.set_default_timeout(WAIT_MS)
            problems: list[str] = []
            feeds: list[Request] = []

            def on_request(request: Request) -> None:
                if request.url.startswith(("data:", "about:")):
                    return
                if not request.url.startswith("http://127.0.0.1:"):  # no CDN, no web font
                    problems.append(f"external request: {request.url}")
                if ADMIN in request.url:
                    problems.append(f"API key in a URL: {request.url}")
                if "/v1/events" in request.url:
                    feeds.append(request)

            def on_console(message: Any) -> None:
                # Chromium logs every non-2xx fetch ("Failed to load resource"): the 409 of a
                # refused send and the refused connections while the gateway restarts are expected.
                if message.type == "error" and not message.text.startswith("Failed to load resource"):
                    problems.append(f"console error: {message.text}")

            page.on("request", on_request)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("console", on_console)
            yield page, problems, feeds
            assert problems == []
        finally:
            await browser.close()


async def session_json(g: Running, session_id: str) -> dict[str, Any]:
    async with g.client() as c:
        r = await c.get(f"/v1/sessions/{session_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())


async def test_operator_takes_over_a_whatsapp_conversation_and_hands_it_back(
    sqlite_url: str, graph: FakeGraph, browser_page: tuple[Page, list[str], list[Request]]
) -> None:
    page, problems, _feeds = browser_page
    async with gateway_on(free_port(), sqlite_url, graph) as g:
        ui = Console(page, g.url, problems)
        await ui.open()
        await page.get_by_label("API key").fill("sk_not_a_key")
        await page.get_by_label("API key").press("Enter")
        await expect(page.get_by_test_id("sign-in-error")).to_contain_text("refused")
        await ui.sign_in()

        # The key lives in this tab's sessionStorage only: never in the URL or localStorage.
        assert await page.evaluate("sessionStorage.getItem('switchboard.console.key')") == ADMIN
        assert ADMIN not in await page.evaluate("JSON.stringify(localStorage) + location.href")
        await expect(page.get_by_label("API key")).to_be_hidden()

        # 1. A customer writes on WhatsApp: the conversation appears, unread, and the AI answers.
        first = "Hello, where is my order 42?"
        assert (await post(g, text_webhook("wamid.CON1", first))).status_code == 200
        item = ui.item("Sheena Nelson")
        await expect(item).to_have_count(1)
        await expect(item.get_by_test_id("unread-count")).to_have_text("1")
        await expect(item.get_by_test_id("channel")).to_have_attribute("data-channel", "whatsapp")
        await expect(item).to_contain_text(CONTACT)
        await expect(item.get_by_test_id("session-preview")).to_have_text(f"AI: {first}")
        await wait_for(lambda: len(graph.sent) == 1)
        session_id = await item.get_attribute("data-session-id")
        assert session_id and session_id.startswith("wa-")

        # 2. Open it: the transcript, the unread count cleared, the reply's delivery tick.
        await item.get_by_test_id("session-button").click()
        await expect(page.get_by_test_id("conversation-title")).to_have_text("Sheena Nelson")
        await expect(item.get_by_test_id("unread-count")).to_have_count(0)
        await expect(item.get_by_test_id("session-button")).to_have_attribute("aria-current", "true")
        await expect(page.locator(f"{MESSAGE} [data-testid=message-text]")).to_have_text([first, first])
        await expect(page.locator(AGENT_MSG)).to_have_attribute(
            "data-status", re.compile("sent|delivered|read")
        )
        await expect(page.get_by_test_id("transcript")).to_have_attribute("aria-live", "polite")

        # 3. Take over: the session is paused (as the API sees it) and the UI says so.
        await expect(page.get_by_role("button", name="Hand back")).to_be_hidden()
        await page.get_by_role("button", name="Take over").click()
        await expect(page.get_by_role("button", name="Hand back")).to_be_visible()
        await expect(page.get_by_role("button", name="Take over")).to_be_hidden()
        await expect(page.get_by_test_id("conversation-paused")).to_be_visible()
        await expect(item.get_by_test_id("paused-badge")).to_be_visible()
        assert (await session_json(g, session_id))["paused"] is True

        # 4. Answer as a human from the composer (Enter sends): it goes out on WhatsApp.
        human = "Hi Sheena, Alex from support here. Your order ships today."
        box = page.get_by_label("Reply as a human")
        await box.fill(human)
        await box.press("Enter")
        await expect(box).to_have_value("")
        human_msg = page.locator(HUMAN_MSG)
        await expect(human_msg).to_have_count(1)
        await expect(human_msg.get_by_test_id("message-text")).to_have_text(human)
        await expect(human_msg.get_by_test_id("message-who")).to_contain_text("Human")
        await wait_for(lambda: len(graph.sent) == 2)
        out = graph.sent[1]
        assert out["type"] == "text" and out["to"] == f"+{CONTACT}" and out["text"]["body"] == human
        # Delivery status ticks follow the provider's receipts.
        human_id = await human_msg.get_attribute("data-message-id")
        assert human_id
        wamid = await sent_wamid(g, human_id)
        await expect(human_msg.get_by_test_id("ticks")).to_have_attribute("data-status", "sent")
        assert (await post(g, status_webhook(wamid, "read"))).status_code == 200
        await expect(human_msg.get_by_test_id("ticks")).to_have_attribute("data-status", "read")

        # 5. Hand back to the AI.
        await page.get_by_role("button", name="Hand back").click()
        await expect(page.get_by_role("button", name="Take over")).to_be_visible()
        await expect(item.get_by_test_id("paused-badge")).to_have_count(0)
        assert (await session_json(g, session_id))["paused"] is False

        # 6. The customer writes again: the AI answers, streamed token by token in the open transcript.
        await page.evaluate(WATCH_REPLY)
        second = "Great news, thank you very much for the quick help with my order"
        assert (await post(g, text_webhook("wamid.CON2", second))).status_code == 200
        reply = page.locator(f"{AGENT_MSG}[data-state=done]").filter(has_text=second)
        await expect(reply).to_have_count(1)
        seen: list[str] = await page.evaluate("window.__replyTexts")
        partials = [s for s in seen if s and s != second]
        assert seen[-1] == second and len(partials) >= 2, f"the reply did not stream: {seen}"
        assert all(second.startswith(p) for p in partials), seen
        await expect(item.get_by_test_id("unread-count")).to_have_count(0)  # it was on screen
        await wait_for(lambda: len(graph.sent) == 3)

        # 7. The history, in order, as the API and the console both show it.
        order = [
            ("user", "user"),
            ("assistant", "agent"),
            ("assistant", "human"),
            ("user", "user"),
            ("assistant", "agent"),
        ]
        detail = await session_json(g, session_id)
        history = [
            (m["role"], m["source"], m["text"])
            for m in detail["messages"]
            if m["role"] in ("user", "assistant")
        ]
        assert [(r, s) for r, s, _ in history] == order
        assert [t for _, _, t in history] == [first, first, human, second, second]
        await expect(page.locator(f"{MESSAGE} [data-testid=message-text]")).to_have_text(
            [first, first, human, second, second]
        )
        sources = await page.locator(MESSAGE).evaluate_all("els => els.map(e => e.dataset.source)")
        assert sources == ["user", "agent", "human", "user", "agent"]

        # 8. Another conversation, over the HTTP API, whose agent asks for a human:
        #    highlighted in the list with the reason, paused, unread.
        async with g.client() as c:
            r = await c.post(
                "/v1/agents/support/messages",
                json={
                    "text": "I want a refund for three orders",
                    "contact": {"id": "user-7", "name": "Ada Lovelace"},
                },
            )
            assert r.status_code == 200, r.text
            api_session = r.json()["sessionId"]
        reason = "refund above the agent's limit"
        await g.runtime.service.request_human(api_session, reason)  # what the request_human tool does
        ada = ui.item("Ada Lovelace")
        await expect(ada).to_have_attribute("data-attention", "true")
        await expect(ada.get_by_test_id("attention-reason")).to_contain_text(reason)
        await expect(ada.get_by_test_id("channel")).to_have_attribute("data-channel", "api")
        await expect(ada.get_by_test_id("paused-badge")).to_be_visible()
        await expect(ada.get_by_test_id("unread-count")).to_have_text("1")
        await expect(page.get_by_test_id("session-item").first).to_have_attribute(
            "data-session-id", api_session
        )

        # 9. Search by contact.
        await page.get_by_label("Search by contact").fill(CONTACT)
        await page.get_by_label("Search by contact").press("Enter")
        await expect(page.get_by_test_id("session-item")).to_have_count(1)
        await expect(page.get_by_test_id("session-item")).to_have_attribute("data-session-id", session_id)
        await page.get_by_label("Search by contact").fill("")
        await expect(page.get_by_test_id("session-item")).to_have_count(2)

        await box.focus()
        DOCS.mkdir(exist_ok=True)
        await page.screenshot(path=str(DOCS / "console.png"))

        # 10. A phone-sized screen: list and transcript stack, with a back button.
        await page.set_viewport_size({"width": 390, "height": 844})
        await expect(page.get_by_test_id("conversation")).to_be_visible()
        await expect(page.get_by_test_id("session-list")).to_be_hidden()
        await expect(page.get_by_role("button", name="Back to conversations")).to_be_visible()
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"horizontal scrolling at 390 px: {width}"
        await page.screenshot(path=str(DOCS / "console-mobile.png"))
        await page.get_by_role("button", name="Back to conversations").click()
        await expect(page.get_by_test_id("session-list")).to_be_visible()
        await expect(page.get_by_test_id("conversation")).to_be_hidden()
        await expect(item.get_by_test_id("session-button")).to_be_focused()
        await item.get_by_test_id("session-button").press("Enter")  # keyboard opens it again
        await expect(page.get_by_test_id("conversation")).to_be_visible()
        await page.set_viewport_size({"width": 1280, "height": 800})

        # 11. The 24-hour window closes (a 131047 failure): sending is refused, inline.
        last_reply = await page.locator(AGENT_MSG).last.get_attribute("data-message-id")
        assert last_reply
        error = {"code": 131047, "title": "Re-engagement message", "message": "Re-engagement message"}
        await post(g, status_webhook(await sent_wamid(g, last_reply), "failed", error=error))
        await expect(page.locator(AGENT_MSG).last.get_by_test_id("ticks")).to_have_attribute(
            "data-status", "failed"
        )
        await box.fill("Are you still there?")
        await page.get_by_role("button", name="Send").click()
        composer_error = page.get_by_test_id("composer-error")
        await expect(composer_error).to_have_attribute("data-code", "window_closed")
        await expect(composer_error).to_contain_text("window is closed")
        await expect(box).to_have_value("Are you still there?")  # nothing lost
        assert len(graph.sent) == 3

        # 12. Sign out forgets the key.
        await page.get_by_role("button", name="Sign out").click()
        await expect(page.get_by_label("API key")).to_be_visible()
        assert await page.evaluate("sessionStorage.getItem('switchboard.console.key')") is None


async def test_the_feed_resumes_with_last_event_id_after_a_gateway_restart(
    sqlite_url: str, graph: FakeGraph, browser_page: tuple[Page, list[str], list[Request]]
) -> None:
    page, problems, feeds = browser_page
    port = free_port()
    async with gateway_on(port, sqlite_url, graph) as g:
        ui = Console(page, g.url, problems)
        await ui.open()
        await ui.sign_in()
        assert (await post(g, text_webhook("wamid.RS1", "before the restart"))).status_code == 200
        item = ui.item("Sheena Nelson")
        await expect(item.get_by_test_id("session-preview")).to_have_text("AI: before the restart")
        await expect(item.get_by_test_id("unread-count")).to_have_text("1")
        # The reply's `message.status` (sent) follows the reply itself: wait until it is in too.
        await wait_for(lambda: len(graph.sent) == 1)
        last_seq = None
        while True:  # settled: unchanged for half a second
            seen = await page.evaluate("window.switchboardConsole.lastSeq")
            if seen == last_seq:
                break
            last_seq = seen
            await asyncio.sleep(0.5)
        assert isinstance(last_seq, int) and last_seq > 0

        # While the gateway is away (and until the test says so), the console cannot reconnect:
        # what happens meanwhile can only reach it through the Last-Event-ID replay.
        async def refuse(route: Route) -> None:
            await route.abort("connectionrefused")

        await page.route("**/v1/events*", refuse)
    await expect(page.get_by_test_id("feed-status")).to_have_attribute("data-state", "reconnecting")
    feeds.clear()

    async with gateway_on(port, sqlite_url, graph) as g:
        assert (await post(g, text_webhook("wamid.RS2", "after the restart"))).status_code == 200
        await wait_for(lambda: len(graph.sent) == 2)
        await page.unroute("**/v1/events*", refuse)
        await expect(item.get_by_test_id("session-preview")).to_have_text("AI: after the restart")
        await expect(item.get_by_test_id("unread-count")).to_have_text("2")  # replayed once, counted once
        await ui.live()  # stream.caughtUp, then live
        resumed = [r for r in feeds if await r.header_value("last-event-id")]
        assert resumed, "the console reconnected without Last-Event-ID"
        assert await resumed[0].header_value("last-event-id") == str(last_seq)
        assert await resumed[0].header_value("authorization") == f"Bearer {ADMIN}"

        # And it is live again.
        await item.get_by_test_id("session-button").click()
        assert (await post(g, text_webhook("wamid.RS3", "and live again"))).status_code == 200
        await expect(
            page.locator(f"{AGENT_MSG}[data-state=done]").filter(has_text="and live again")
        ).to_have_count(1)
        texts = await page.locator(f"{MESSAGE} [data-testid=message-text]").all_inner_texts()
        assert texts == ["before the restart"] * 2 + ["after the restart"] * 2 + ["and live again"] * 2

        # A reload keeps the tab signed in and resumes the feed where it was.
        seq = await page.evaluate("window.switchboardConsole.lastSeq")
        feeds.clear()
        await page.reload()
        await ui.live()
        await expect(page.get_by_label("API key")).to_be_hidden()
        await expect(item.get_by_test_id("session-preview")).to_have_text("AI: and live again")
        resumed_from = [await r.header_value("last-event-id") for r in feeds]
        assert len(resumed_from) == 1 and int(resumed_from[0] or -1) >= seq, resumed_from
