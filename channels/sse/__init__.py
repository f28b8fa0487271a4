"""Server-Sent Events: the live event feeds (PROTOCOL §3)."""
