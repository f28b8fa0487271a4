"""The browser chat channel: `/chat/ws?token=…` (PROTOCOL §4)."""
