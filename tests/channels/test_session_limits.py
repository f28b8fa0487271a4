"""Session limits on every channel (issue 16, item 11): chat sockets and HTTP-API sessions,
with short timeouts, on SQLite and PostgreSQL, and across a restart."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets

from tests.conftest import Running, free_port, make_settings, mint, run_gateway

FAST = {"limits_sweep_seconds": 0.05}


def settings(db_url: str, **limits: Any) -> Any:
    demo = {"answer": "echo", "echo_delay_ms": 0, "limits": limits}
    return make_settings(db_url, agents={"demo": demo}, server=FAST)


async def events(g: Running, session_id: str, *types: str) -> list[Any]:
    return await g.runtime.store.events_after(0, session_id=session_id, types=list(types) or None)


async def wait_event(g: Running, session_id: str, type_: str, timeout: float = 10) -> Any:
    async with asyncio.timeout(timeout):
        while not (found := await events(g, session_id, type_)):
            await asyncio.sleep(0.03)
        return found[-1]


async def api_message(g: Running, text: str, session_id: str | None = None) -> str:
    body: dict[str, Any] = {"text": text}
    if session_id:
        body["sessionId"] = session_id
    async with g.client() as c:
        r = await c.post("/v1/agents/demo/messages", json=body)
        assert r.status_code == 200, r.text
        return str(r.json()["sessionId"])


async def test_chat_socket_is_warned_then_timed_out_and_closed_cleanly(db_url: str) -> None:
    limits = {"idle_timeout_seconds": 0.8, "idle_warning_seconds": 0.5, "idle_grace_seconds": 0.4}
    async with run_gateway(settings(db_url, **limits)) as g:
        async with websockets.connect(f"{g.ws_url}/chat/ws?token={await mint(g)}") as ws:

            async def frame() -> dict[str, Any]:
                async with asyncio.timeout(10):
                    obj: dict[str, Any] = json.loads(await ws.recv())
                    return obj

            started = await frame()
            await ws.send(json.dumps({"event": "message", "text": "hello"}))
            seen = [await frame()]
            while seen[-1]["event"] != "chat.ended":
                seen.append(await frame())
            kinds = [f["event"] for f in seen if f["event"] not in ("chat.token", "chat.done")]
            assert kinds == ["chat.idleWarning", "chat.idleWarning", "chat.timeout", "chat.ended"]
            first, final = seen[-4], seen[-3]
            assert 0 < first["remainingSeconds"] <= 0.5 and first["idleTimeoutSeconds"] == 0.8
            assert "final" not in first
            assert final["final"] is True and 0 < final["remainingSeconds"] <= 0.4
            assert seen[-2] == {"event": "chat.timeout", "reason": "idle_timeout"}
            assert seen[-1]["reason"] == "idle_timeout"
            async with asyncio.timeout(5):
                await ws.wait_closed()
            assert ws.close_code == 1000 and ws.close_reason == "session ended"
        sid = started["sessionId"]
        stored = [e.type for e in await events(g, sid)]
        assert stored[-2:] == ["session.timeout", "session.ended"]


async def test_user_messages_reset_the_idle_clock_but_replies_do_not(db_url: str) -> None:
    limits = {"idle_timeout_seconds": 2.0, "idle_warning_seconds": 0, "idle_grace_seconds": 0}
    async with run_gateway(settings(db_url, **limits)) as g:
        sid = await api_message(g, "one")
        for word in ("two", "three", "four"):
            await asyncio.sleep(0.8)
            await api_message(g, word, sid)  # each answered at once: only the user counts
        session = await g.runtime.store.session(sid)
        assert session is not None and session.active
        ended = await wait_event(g, sid, "session.ended")
        assert ended.data["reason"] == "idle_timeout"
        assert not await events(g, sid, "session.idleWarning")  # 0 disables the warning


async def test_max_duration_ends_an_api_session_and_zero_disables_the_rest(db_url: str) -> None:
    async with run_gateway(settings(db_url, idle_timeout_seconds=0, max_duration_seconds=2.0)) as g:
        sid = await api_message(g, "hi")
        timeout = await wait_event(g, sid, "session.timeout")
        assert timeout.data == {"reason": "max_duration", "maxDurationSeconds": 2.0}
        assert (await wait_event(g, sid, "session.ended")).data["reason"] == "max_duration"
    async with run_gateway(settings(db_url, idle_timeout_seconds=0, max_duration_seconds=0)) as g:
        sid = await api_message(g, "hi")
        await asyncio.sleep(0.6)
        session = await g.runtime.store.session(sid)
        assert session is not None and session.active
        assert not await events(g, sid, "session.idleWarning", "session.timeout")


async def test_a_restart_forgets_no_timer_and_repeats_no_warning(db_url: str) -> None:
    # A wide grace period, so the restarted gateway is up before the end even on a busy machine.
    limits = {"idle_timeout_seconds": 2.0, "idle_warning_seconds": 1.6, "idle_grace_seconds": 3.0}
    port = free_port()
    async with run_gateway(settings(db_url, **limits), port=port) as g:
        sid = await api_message(g, "remember me")
        await wait_event(g, sid, "session.idleWarning")
    # Down while the timeout passes; the first sweep after the start acts on what is due.
    await asyncio.sleep(0.5)
    async with run_gateway(settings(db_url, **limits), port=port) as g:
        ended = await wait_event(g, sid, "session.ended")
        assert ended.data["reason"] == "idle_timeout"
        warnings = [e.data for e in await events(g, sid, "session.idleWarning")]
        assert [w.get("final", False) for w in warnings] == [False, True]
        assert [e.type for e in await events(g, sid)][-2:] == ["session.timeout", "session.ended"]
