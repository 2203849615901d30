"""Noticing that a client closed its connection while its request waits."""

from __future__ import annotations

import select
import socket
from collections.abc import Callable
from typing import Any


def client_gone_probe(environ: dict[str, Any]) -> Callable[[], bool]:
    """A cheap check of the request's socket: True once the client has closed it.

    WSGI gives no disconnect signal until a write fails; a waiting request writes nothing, so it
    peeks at the socket gunicorn (or werkzeug) exposes. Without one, the client is assumed present.
    """
    sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
    if sock is None:
        return lambda: False

    def gone() -> bool:
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            # Readable with nothing to read is EOF; pipelined bytes of a next request are not.
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    return gone
