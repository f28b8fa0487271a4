"""Persistence. Nothing outside this package touches an ORM session."""
