"""Shared by the client tests: real API keys for a live server, and the snapshot to train on."""

from __future__ import annotations

from governance import services


def api_key(role: str, username: str | None = None) -> str:
    """A raw API key of a user with ``role`` (what a pipeline is given)."""
    user = services.user_ensure_with_role(username=username or f"client_{role}", role=role)
    _, raw_key = services.api_key_create(user=user, name="client-test")
    return raw_key
