"""A tool-using agent: the gateway runs the LLM, the tools run in this process.

    GATEWAY_API_KEY=$GATEWAY_ADMIN_KEY python examples/tool_agent.py

Environment:
    GATEWAY_URL       the gateway (default http://127.0.0.1:8080)
    GATEWAY_API_KEY   an API key of the gateway (required)
    LLM_BASE_URL      an OpenAI-compatible endpoint (default Ollama: http://127.0.0.1:11434/v1)
    LLM_MODEL         a model that supports tool calling (default llama3.2)
    LLM_API_KEY_ENV   the NAME of the variable holding the LLM key, read by the *gateway*
                      (e.g. OPENAI_API_KEY); leave unset for Ollama

Then chat with it at http://127.0.0.1:8080/?agent=support and ask
"Where is order ORD-1001?" or "What time is it in Tokyo?".
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import sys
import zoneinfo
from typing import Any

from gateway.client import Agent, Gateway, Session

ORDERS: dict[str, dict[str, Any]] = {
    "ORD-1001": {"status": "shipped", "carrier": "UPS", "eta": "tomorrow", "items": ["Haircut voucher"]},
    "ORD-1002": {"status": "processing", "eta": "in 3 days", "items": ["Beard oil", "Comb"]},
}

PROMPT = """You are Nova, the support agent of Acme. Be concise and friendly.
Today is {{date}}. The customer is {{customer_name}}.
Use the tools to look up orders and the time; never invent order details."""


def build(gw: Gateway, *, base_url: str, model: str, api_key_env: str | None = None) -> Agent:
    """Declare the `support` agent and its tools on `gw`."""
    llm: dict[str, Any] = {"base_url": base_url, "model": model, "first_token_timeout_seconds": 120}
    if api_key_env:
        llm["api_key_env"] = api_key_env
    support = gw.agent(
        "support",
        prompt=PROMPT,
        greeting="Hi! I'm Nova. How can I help with your order?",
        llm=llm,
        allowed_origins=["http://localhost:*", "http://127.0.0.1:*"],  # the demo page may chat with it
    )

    @support.tool
    async def lookup_order(order_id: str, session: Session) -> dict[str, Any]:
        """Look up an order by its id.

        Args:
            order_id: The order id, like ORD-1001.
        """
        order = ORDERS.get(order_id.strip().upper())
        if order is None:
            return {"error": f"no order {order_id}"}
        await session.add_context(f"The customer asked about order {order_id}.")
        return {"order_id": order_id, **order}

    @support.tool(ephemeral=True)  # the result is used for this reply only, never stored
    def get_time(timezone: str = "UTC") -> str:
        """The current date and time in a time zone.

        Args:
            timezone: An IANA time zone name, like Europe/Madrid.
        """
        zone = datetime.UTC if timezone.upper() == "UTC" else zoneinfo.ZoneInfo(timezone)
        now = datetime.datetime.now(zone)  # an unknown zone raises: the model sees the error
        return now.strftime("%Y-%m-%d %H:%M %Z")

    @support.on("session.started")
    async def greet(event: dict[str, Any], session: Session) -> None:
        contact = event.get("contact") or {}
        await session.set_prompt_vars(customer_name=contact.get("name") or "unknown")

    @support.on("llm.toolCall")
    def log_calls(event: dict[str, Any]) -> None:
        names = ", ".join(call["name"] for call in event.get("toolCalls", []))
        logging.info("the model called %s", names)

    return support


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api_key = os.environ.get("GATEWAY_API_KEY")
    if not api_key:
        sys.exit("set GATEWAY_API_KEY (e.g. to the gateway's GATEWAY_ADMIN_KEY)")
    gw = Gateway(os.environ.get("GATEWAY_URL", "http://127.0.0.1:8080"), api_key=api_key)
    build(
        gw,
        base_url=os.environ.get("LLM_BASE_URL", "http://127.0.0.1:11434/v1"),
        model=os.environ.get("LLM_MODEL", "llama3.2"),
        api_key_env=os.environ.get("LLM_API_KEY_ENV") or None,
    )
    try:
        asyncio.run(gw.run())  # connects, registers, reconnects by itself; Ctrl-C to stop
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
