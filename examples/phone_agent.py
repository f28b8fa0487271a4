"""A phone receptionist that lives in this process: screens calls, answers, transfers, hangs up.

    GATEWAY_API_KEY=$GATEWAY_ADMIN_KEY python examples/phone_agent.py

The gateway needs a Twilio number for the agent `receptionist` in its gateway.toml
(see examples/README.md); Twilio speaks, the gateway relays, and this process:

- screens each incoming call (`call.ringing`): numbers in BLOCKED_CALLERS hear a busy
  tone, everyone else is put through;
- answers every turn itself, without a model (swap `answer_for` for your LLM call);
- transfers the caller to a person (`session.forward`) or hangs up
  (`session.hangup`) once its last sentence has been said (`after_reply=True`);
- logs key presses and how each call ended.

Environment:
    GATEWAY_URL       the gateway (default http://127.0.0.1:8080)
    GATEWAY_API_KEY   an API key of the gateway (required)
    TRANSFER_TO       where "a person" is (default +15558675309)
    BLOCKED_CALLERS   comma-separated numbers to refuse
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

from gateway.client import Agent, Gateway, ReplyWriter, Session, Turn

PERSON_WORDS = ("person", "human", "someone", "operator", "agent")
BYE_WORDS = ("bye", "goodbye", "that's all", "hang up")


def answer_for(text: str) -> str:
    """A stand-in for a model: what the receptionist says to one utterance."""
    return (
        f"You said: {text.rstrip('.!?')}. I'm a demo receptionist: say 'a person' to talk "
        "to a colleague, or 'goodbye' to end the call."
    )


def build(gw: Gateway, *, transfer_to: str = "+15558675309", blocked: frozenset[str] = frozenset()) -> Agent:
    # On a gateway.toml agent only `phone.ringing` (and tools) of this declaration take
    # effect: the greeting and phone settings there win (a process never redefines it).
    # They apply as written when this process declares an agent of its own.
    desk = gw.agent(
        "receptionist",
        greeting="Thanks for calling Acme. How can I help?",
        phone={
            "ringing": True,  # screen calls here (or `ringing = true` on the number in gateway.toml)
            "language": "en-US",
            "idle_timeout_seconds": 30,
            "idle_warning_seconds": 10,
            "idle_message": "Are you still there?",
        },
    )

    @desk.on("call.ringing")
    async def screen(event: dict[str, Any]) -> None:
        if event["from"] in blocked:
            logging.info("refusing a call from %s", event["from"])
            await desk.reject_call(event["callId"], "busy")
        else:
            await desk.accept_call(event["callId"])

    @desk.on_turn
    async def answer(turn: Turn, reply: ReplyWriter) -> None:
        words = turn.text.lower()
        if any(w in words for w in PERSON_WORDS):
            # Ask first, then say the last sentence: the transfer waits until it has been said.
            await turn.session.forward(transfer_to, after_reply=True)
            await reply.end("Sure, I'm connecting you to a colleague now.")
            return
        if any(w in words for w in BYE_WORDS):
            await turn.session.hangup(after_reply=True)
            await reply.end("Thanks for calling. Goodbye!")
            return
        async with reply:  # streamed word by word: Twilio starts speaking at the first one
            for word in answer_for(turn.text).split(" "):
                await reply.write(word + " ")

    @desk.on("call.dtmf")
    def keypress(event: dict[str, Any], session: Session) -> None:
        logging.info("%s pressed %s", session.id, event.get("digit"))

    @desk.on("session.ended")
    def ended(event: dict[str, Any], session: Session) -> None:
        logging.info("%s ended: %s after %s s", session.id, event.get("reason"), event.get("duration"))

    return desk


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api_key = os.environ.get("GATEWAY_API_KEY")
    if not api_key:
        sys.exit("set GATEWAY_API_KEY (e.g. to the gateway's GATEWAY_ADMIN_KEY)")
    gw = Gateway(os.environ.get("GATEWAY_URL", "http://127.0.0.1:8080"), api_key=api_key)
    blocked = frozenset(n.strip() for n in os.environ.get("BLOCKED_CALLERS", "").split(",") if n.strip())
    build(gw, transfer_to=os.environ.get("TRANSFER_TO", "+15558675309"), blocked=blocked)
    try:
        asyncio.run(gw.run())  # connects, registers, reconnects by itself; Ctrl-C to stop
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
