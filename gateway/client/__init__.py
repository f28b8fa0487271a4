"""The Python client for agent processes (`WS /v1/agents/ws`, docs/agents.md).

    from gateway.client import Gateway, ReplyWriter, Session, Turn

    gw = Gateway("http://127.0.0.1:8080", api_key="sk_...")
    support = gw.agent("support", prompt="You are Nova.", llm={"base_url": "...", "model": "..."})

    @support.tool
    async def lookup_order(order_id: str, session: Session) -> dict:
        '''Look up an order by its id.'''
        return {"status": "shipped"}

    asyncio.run(gw.run())

Importing this package has no side effects: nothing connects until `run()`.
"""

from gateway.client.agent import Agent, Tool, tool
from gateway.client.connection import Backoff, Gateway, websocket_url
from gateway.client.errors import (
    AuthenticationError,
    ClientError,
    CommandError,
    ConnectionLost,
    NotConnected,
    RegistrationError,
    RequestTimeout,
)
from gateway.client.schema import SchemaError, function_parameters, type_schema
from gateway.client.session import ReplyWriter, Session, Turn

__all__ = [
    "Agent",
    "AuthenticationError",
    "Backoff",
    "ClientError",
    "CommandError",
    "ConnectionLost",
    "Gateway",
    "NotConnected",
    "RegistrationError",
    "ReplyWriter",
    "RequestTimeout",
    "SchemaError",
    "Session",
    "Tool",
    "Turn",
    "function_parameters",
    "tool",
    "type_schema",
    "websocket_url",
]
