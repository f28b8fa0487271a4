"""Switchboard: a self-hostable messaging-channel gateway for AI agents."""

__version__ = "0.1.0"
