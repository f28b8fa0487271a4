from __future__ import annotations

import json

import websockets

from tests.conftest import Running, mint


async def test_chat_echo_streams(gateway: Running) -> None:
    token = await mint(gateway)
    async with websockets.connect(f"{gateway.ws_url}/chat/ws?token={token}") as ws:
        started = json.loads(await ws.recv())
        assert started["event"] == "chat.started"
        await ws.send(json.dumps({"event": "message", "text": "hello there world"}))
        tokens = []
        while True:
            frame = json.loads(await ws.recv())
            if frame["event"] == "chat.token":
                tokens.append(frame["text"])
            elif frame["event"] == "chat.done":
                assert frame["text"] == "hello there world"
                break
        assert "".join(tokens) == "hello there world"
        assert len(tokens) == 3
