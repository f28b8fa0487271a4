"""The exceptions of the agent-process client."""

from __future__ import annotations


class ClientError(Exception):
    """Base class of everything the client raises on purpose."""


class CommandError(ClientError):
    """The gateway answered a command with `error {code, message}`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class RegistrationError(CommandError):
    """`agent.register` was refused (bad config, an agent the key may not use, …).

    Fatal: `Gateway.run()` raises it instead of reconnecting, since the same
    registration would be refused again.
    """

    def __init__(self, agent_id: str, code: str, message: str) -> None:
        super().__init__(code, message)
        self.agent_id = agent_id


class AuthenticationError(ClientError):
    """The gateway closed the socket with 4401: a missing or wrong API key. Fatal."""


class NotConnected(ClientError):
    """No connection to the gateway came up in time for a command."""


class ConnectionLost(ClientError):
    """The connection dropped before the gateway answered (or while a reply streamed)."""


class RequestTimeout(ClientError, TimeoutError):
    """The gateway did not answer a command in time."""
