"""Ways an agent answers a turn: echo, llm, webhook, or a connected process."""
