"""REST routes: tokens, sessions, agent messages, health, metrics."""
