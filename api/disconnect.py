"""Noticing that a client closed its connection while its request waits."""

from __future__ import annotations

import select
import socket
from collections.abc import Callable
from typing import Any


def _kernel_poll() -> Callable[[], Any]:
    """``select.poll``, the kernel's own even under gevent's monkey-patching.

    The probe only asks "readable now?" (a zero timeout): gevent's cooperative poll is built for
    waiting, and answers a zero-timeout question through its event loop's watchers; the kernel's
    answers it in one system call and never blocks.
    """
    try:
        from gevent import monkey
    except ImportError:
        return select.poll
    return monkey.get_original("select", "poll")


_poll = _kernel_poll()


#: WSGI environ key of a request made by the API itself (api/batches/execute.py): a callable that
#: says when its "client" is gone (the batch was cancelled, or its runner lost the batch's lease).
GONE_ENVIRON_KEY = "modelyard.client_gone"


def client_gone_probe(environ: dict[str, Any]) -> Callable[[], bool]:
    """A cheap check of the request's socket: True once the client has closed it.

    WSGI gives no disconnect signal until a write fails; a waiting request writes nothing, so it
    peeks at the socket gunicorn (or werkzeug) exposes. Without one, the client is assumed present.
    ``poll``, not ``select``: ``select`` cannot watch descriptors above 1023, and a busy API has them.
    """
    internal = environ.get(GONE_ENVIRON_KEY)
    if internal is not None:  # a request made inside the API (a batch line) says when to give up
        return internal
    sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
    if sock is None:
        return lambda: False
    return lambda: socket_closed_by_peer(sock)


def socket_closed_by_peer(sock: socket.socket) -> bool:
    """True if the peer closed ``sock`` (or it broke); pipelined bytes of a next request are not that."""
    try:
        poller = _poll()
        poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
        events = poller.poll(0)
        if not events:
            return False
        _, mask = events[0]
        if mask & (select.POLLERR | select.POLLNVAL):
            return True
        # Readable with nothing to read is EOF (a hang-up may still have bytes to read first).
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True
