"""The demo page at `/` in a real headless Chromium (Debian's; never a downloaded one).

The gateway is real (uvicorn on 127.0.0.1); its `demo` agent echoes word by word with a
visible delay, so the page's streaming, the SSE feed and the reconnect paths are all
exercised as a user would see them.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.async_api import Page, Request, async_playwright, expect

from tests.conftest import Running, make_settings, run_gateway
from tests.services import CHROMIUM_ARGS, need_chromium

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "demo.png"
WAIT_MS = 15_000
MAX_TEXT = 120

expect.set_options(timeout=10_000)

ASSISTANT = "[data-testid=msg][data-role=assistant]"
USER = "[data-testid=msg][data-role=user]"

# Records every distinct text of the newest assistant bubble, as the DOM changes.
WATCH_REPLY = """() => {
  window.__replyTexts = [];
  const t = document.getElementById('transcript');
  const record = () => {
    const bubbles = t.querySelectorAll('[data-testid=msg][data-role=assistant]');
    if (!bubbles.length) return;
    const text = bubbles[bubbles.length - 1].querySelector('.text').textContent;
    const seen = window.__replyTexts;
    if (seen[seen.length - 1] !== text) seen.push(text);
  };
  new MutationObserver(record).observe(t, {subtree: true, childList: true, characterData: true});
}"""


@dataclass
class Ui:
    page: Page
    url: str
    problems: list[str] = field(default_factory=list)
    token_requests: list[Request] = field(default_factory=list)

    async def open(self) -> None:
        await self.page.goto(self.url + "/")
        await self.connected()

    async def connected(self) -> None:
        await expect(self.page.get_by_test_id("chat-status")).to_have_attribute("data-state", "open")
        await expect(self.page.get_by_test_id("feed-status")).to_have_attribute("data-state", "open")

    async def say(self, text: str) -> None:
        box = self.page.get_by_label("Message")
        await box.fill(text)
        await box.press("Enter")  # the form submits from the keyboard

    async def reply_done(self, text: str) -> None:
        bubble = self.page.locator(f"{ASSISTANT}[data-state=done]").filter(has_text=text)
        await expect(bubble).to_have_count(1)


@pytest.fixture
async def demo_gateway(sqlite_url: str) -> AsyncIterator[Running]:
    settings = make_settings(
        sqlite_url,
        agents={
            "demo": {
                "answer": "echo",
                "echo_delay_ms": 30,
                "limits": {"max_text_chars": MAX_TEXT},
                "allowed_origins": ["http://127.0.0.1:*", "http://localhost:*"],
            }
        },
    )
    async with run_gateway(settings) as running:
        yield running


@pytest.fixture
async def ui(demo_gateway: Running) -> AsyncIterator[Ui]:
    chromium = need_chromium()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, timeout=WAIT_MS)
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 720})
            page = await context.new_page()
            page.set_default_timeout(WAIT_MS)
            ui = Ui(page=page, url=demo_gateway.url)

            def on_request(request: Request) -> None:
                if request.url.startswith(("data:", "about:")):
                    return
                if not request.url.startswith(demo_gateway.url):  # no CDN, no web font
                    ui.problems.append(f"external request: {request.url}")
                if request.url.endswith("/v1/tokens"):
                    ui.token_requests.append(request)

            page.on("request", on_request)
            page.on("pageerror", lambda exc: ui.problems.append(f"page error: {exc}"))
            page.on(
                "console",
                lambda m: ui.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
            )
            yield ui
            assert ui.problems == []
        finally:
            await browser.close()


async def test_chat_streams_and_feed_shows_events(ui: Ui) -> None:
    page = ui.page
    await ui.open()

    # Tokens were minted through the allowed-origins path: no key, the browser's Origin.
    assert ui.token_requests
    headers = await ui.token_requests[0].all_headers()
    assert headers.get("origin") == ui.url
    assert "authorization" not in headers

    # Accessible basics: a labelled input, a submit button, a live transcript.
    await expect(page.get_by_role("button", name="Send")).to_be_enabled()
    await expect(page.get_by_test_id("transcript")).to_have_attribute("aria-live", "polite")
    await expect(page.get_by_test_id("curl-hint")).to_contain_text(
        'curl -N -H "Authorization: Bearer $GATEWAY_ADMIN_KEY"'
    )
    await expect(page.get_by_test_id("curl-hint")).to_contain_text("/v1/events")

    await page.evaluate(WATCH_REPLY)
    text = "the quick brown fox jumps over the lazy dog"
    await ui.say(text)
    await expect(page.locator(USER)).to_have_text([re.compile(re.escape(text))])
    await expect(page.get_by_label("Message")).to_have_value("")
    await ui.reply_done(text)

    seen: list[str] = await page.evaluate("window.__replyTexts")
    assert seen[-1] == text
    partials = [s for s in seen if s and s != text]
    assert len(partials) >= 2, f"the reply did not stream: {seen}"
    assert all(text.startswith(p) for p in partials), seen
    assert seen.index(partials[0]) < seen.index(text)

    # The feed: the user's message and the reply, each with its seq, in order.
    entries = page.get_by_test_id("feed-entry").filter(has_text="quick brown")
    user_entry = entries.and_(page.locator('[data-event="user.message"]'))
    bot_entry = entries.and_(page.locator('[data-event="bot.message"]'))
    await expect(user_entry).to_have_count(1)
    await expect(bot_entry).to_have_count(1)
    await expect(user_entry).to_have_attribute("data-seq", re.compile(r"^\d+$"))
    await expect(bot_entry).to_have_attribute("data-seq", re.compile(r"^\d+$"))
    user_seq = int(await user_entry.get_attribute("data-seq") or 0)
    bot_seq = int(await bot_entry.get_attribute("data-seq") or 0)
    assert 0 < user_seq < bot_seq
    await expect(user_entry).to_contain_text(f"#{user_seq}")
    # bot.token deltas are collapsed into one entry per reply.
    reply_id = await page.locator(ASSISTANT).last.get_attribute("data-message-id")
    tokens = page.locator(f'[data-testid=feed-entry][data-event="bot.token"][data-message-id="{reply_id}"]')
    await expect(tokens).to_have_count(1)
    assert int(await tokens.get_attribute("data-count") or 0) == len(text.split())

    await page.get_by_label("Message").fill("Try the curl command to watch the same feed from a terminal.")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOT))

    # On a narrow screen the feed is stacked below the chat.
    await page.set_viewport_size({"width": 600, "height": 900})
    chat_box = await page.locator("section.chat").bounding_box()
    feed_box = await page.locator("section.feed").bounding_box()
    assert chat_box is not None and feed_box is not None
    assert feed_box["y"] >= chat_box["y"] + chat_box["height"]


async def test_reconnect_resumes_without_duplicates(ui: Ui) -> None:
    page = ui.page
    await ui.open()
    first = "hello before the reload"
    await ui.say(first)
    await ui.reply_done(first)
    session_id = await page.get_by_test_id("session-id").inner_text()
    assert session_id.startswith("chat")

    async def history_once(*texts: str) -> None:
        await expect(page.locator(f"{USER} [data-testid=msg-text]")).to_have_text(list(texts))
        await expect(page.locator(f"{ASSISTANT} [data-testid=msg-text]")).to_have_text(list(texts))
        await expect(page.get_by_test_id("session-id")).to_have_text(session_id)

    # A reload resumes the tab's session: chat.started carries the history, shown once.
    await page.reload()
    await ui.connected()
    await expect(page.get_by_test_id("notice")).to_contain_text("Resumed session")
    await history_once(first)

    # The socket drops: a fresh token with the sessionId, the history replaces the transcript.
    await page.evaluate("document.querySelectorAll('#transcript > li').forEach(li => li.dataset.old = '1')")
    await page.evaluate("window.switchboardDemo.dropChat()")
    await expect(page.locator("[data-testid=notice]:not([data-old])")).to_contain_text("Resumed session")
    await expect(page.get_by_test_id("chat-status")).to_have_attribute("data-state", "open")
    await history_once(first)

    second = "and after the reconnect"
    await ui.say(second)
    await ui.reply_done(second)
    await history_once(first, second)

    # The feed drops: it mints a new stream token and resumes after the last seq it saw.
    await expect(page.locator('[data-testid=feed-entry][data-event="bot.message"]')).to_have_count(1)
    await page.evaluate("window.switchboardDemo.dropFeed()")
    third = "while the feed reconnects"
    await ui.say(third)
    await ui.reply_done(third)
    await expect(page.get_by_test_id("feed-marker")).to_contain_text("caught up at #")
    await expect(page.get_by_test_id("feed-status")).to_have_attribute("data-state", "open")
    bot_entries = page.locator('[data-testid=feed-entry][data-event="bot.message"]')
    await expect(bot_entries).to_have_count(2)
    await expect(bot_entries.first).to_contain_text(third)
    seqs = [
        s
        for s in await page.locator("[data-testid=feed-entry]").evaluate_all(
            "els => els.map(e => e.dataset.seq)"
        )
        if s
    ]
    assert len(seqs) == len(set(seqs)), f"duplicate feed entries: {seqs}"

    # A chat.error is shown inline and the socket stays open.
    await page.evaluate("document.getElementById('message').removeAttribute('maxlength')")
    await ui.say("x" * (MAX_TEXT + 1))
    await expect(page.locator("[data-testid=chat-error][data-code=text_too_long]")).to_be_visible()
    await expect(page.get_by_test_id("chat-status")).to_have_attribute("data-state", "open")
    await expect(page.get_by_role("button", name="Send")).to_be_enabled()
