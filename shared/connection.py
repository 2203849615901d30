"""Redis clients, configured the same way on both sides."""

from __future__ import annotations

from redis import Redis


def connect(url: str, *, socket_timeout: float | None = 30.0, name: str | None = None) -> Redis:
    """A client for ``url``; ``socket_timeout`` must exceed any blocking command's own timeout.

    ``name`` is every connection's ``CLIENT SETNAME``: what ``CLIENT LIST`` shows for it."""
    return Redis.from_url(
        url,
        socket_connect_timeout=5,
        socket_timeout=socket_timeout,
        health_check_interval=15,
        client_name=name,
    )
