"""Bring your own LLM: this process answers every turn itself and streams the reply.

    GATEWAY_API_KEY=$GATEWAY_ADMIN_KEY python examples/byo_llm_agent.py

The agent is declared without `llm`, so the gateway sends its turns here (`answer =
"process"`). Out of the box it answers with a tiny rule-based bot (it says your words
backwards), so it runs with no model at all. Set BYO_LLM_BASE_URL to stream from any
OpenAI-compatible endpoint instead, called from this process with this process's key.

Environment:
    GATEWAY_URL       the gateway (default http://127.0.0.1:8080)
    GATEWAY_API_KEY   an API key of the gateway (required)
    BYO_LLM_BASE_URL  optional, e.g. http://127.0.0.1:11434/v1 (Ollama) or https://api.openai.com/v1
    BYO_LLM_MODEL     the model (default llama3.2)
    BYO_LLM_API_KEY   the endpoint's key, if it needs one

Then chat with it at http://127.0.0.1:8080/?agent=byo.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx

from gateway.client import Agent, Gateway, ReplyWriter, Session, Turn

SYSTEM = "You are a concise, friendly assistant."
GREETINGS = {"hi", "hello", "hey", "hola", "good morning", "good evening"}


async def rule_based(turn: Turn) -> AsyncIterator[str]:
    """A stand-in for a model: greets, or says the user's words backwards, word by word."""
    text = turn.text.strip()
    if text.lower().strip("!. ") in GREETINGS:
        answer = "Hello! I'm a tiny rule-based bot. Say anything and I'll say it backwards."
    elif text == "/history":
        history = await turn.session.get_history()  # a session command, answered by the gateway
        answer = f"This conversation has {len(history)} messages so far."
    else:
        answer = f"Backwards, that is: {text[::-1]}"
    for word in answer.split(" "):
        yield word + " "
        await asyncio.sleep(0.05)  # so you can watch it stream


async def openai_compatible(turn: Turn, base_url: str, model: str, api_key: str | None) -> AsyncIterator[str]:
    """Stream a chat completion from an OpenAI-compatible endpoint: this is where a real LLM goes."""
    body = {"model": model, "stream": True, "messages": turn.chat_messages(system=SYSTEM)}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(120, connect=10)) as http,
        http.stream("POST", f"{base_url.rstrip('/')}/chat/completions", json=body, headers=headers) as r,
    ):
        r.raise_for_status()  # an exception fails the turn: the person sees an error
        async for line in r.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            choices = json.loads(data).get("choices") or [{}]
            delta = (choices[0].get("delta") or {}).get("content")
            if delta:
                yield delta


def build(
    gw: Gateway, *, base_url: str | None = None, model: str = "llama3.2", api_key: str | None = None
) -> Agent:
    """Declare the `byo` agent (no server-side `llm`: its turns come here)."""
    byo = gw.agent(
        "byo",
        greeting="Hi! I answer from a process of my own.",
        allowed_origins=["http://localhost:*", "http://127.0.0.1:*"],
    )

    @byo.on_turn
    async def answer(turn: Turn, reply: ReplyWriter) -> None:
        tokens = openai_compatible(turn, base_url, model, api_key) if base_url else rule_based(turn)
        async with reply:  # reply.start now; reply.end on exit, reply.error if this raises
            async for token in tokens:
                await reply.write(token)

    @byo.on("user.message")
    def log_message(event: dict[str, Any], session: Session) -> None:
        logging.info("%s says %r", session.id, event.get("text"))

    return byo


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api_key = os.environ.get("GATEWAY_API_KEY")
    if not api_key:
        sys.exit("set GATEWAY_API_KEY (e.g. to the gateway's GATEWAY_ADMIN_KEY)")
    gw = Gateway(os.environ.get("GATEWAY_URL", "http://127.0.0.1:8080"), api_key=api_key)
    build(
        gw,
        base_url=os.environ.get("BYO_LLM_BASE_URL") or None,
        model=os.environ.get("BYO_LLM_MODEL", "llama3.2"),
        api_key=os.environ.get("BYO_LLM_API_KEY") or None,
    )
    try:
        asyncio.run(gw.run())  # connects, registers, reconnects by itself; Ctrl-C to stop
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
