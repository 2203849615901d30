"""rq-dashboard's Redis clients from :func:`shared.connection.connect`, like every other process's.

Stock rq-dashboard 0.9 connects through ``redis_sentinel_url`` (its own URL parsing, no ACL user
with Sentinel, a new client for every page view). Here each configured URL gets one client of the
project's factory, made once: plain, TLS (``rediss://``), AUTH and ACL users, and Sentinel
(``redis+sentinel://``) work as they do for the API and the workers.
"""

from __future__ import annotations

import threading

import rq_dashboard.cli as cli
import rq_dashboard.web as web
from flask import current_app, request
from redis import Redis

from shared.connection import connect

_clients: dict[str, Redis] = {}
_lock = threading.Lock()


def client_for(url: str) -> Redis:
    """The dashboard's one client for ``url``."""
    with _lock:
        if url not in _clients:
            _clients[url] = connect(url, name="modelyard-dashboard")
        return _clients[url]


def _urls(app) -> tuple[str, ...]:
    urls = app.config.get("RQ_DASHBOARD_REDIS_URL")
    if isinstance(urls, str):
        urls = (urls,)
        app.config["RQ_DASHBOARD_REDIS_URL"] = urls
    if not urls:
        raise RuntimeError("No Redis configuration!")
    return tuple(urls)


def setup_rq_connection(app) -> None:
    """rq-dashboard's ``setup_rq_connection``: the first URL's client."""
    web.upgrade_config(app)
    app.redis_conn = client_for(_urls(app)[0])


def push_rq_connection() -> None:
    """rq-dashboard's per-request hook: the client of the instance the URL names."""
    number = request.view_args.get("instance_number") if request.view_args else None
    if number is None:
        return
    urls = _urls(current_app)
    if number >= len(urls):
        raise LookupError("Index exceeds RQ list. Not Permitted.")
    current_app.redis_conn = client_for(urls[number])


def patch() -> None:
    """Replace rq-dashboard's connection setup and its per-request hook with the ones above."""
    cli.setup_rq_connection = setup_rq_connection
    web.setup_rq_connection = setup_rq_connection
    hooks = web.blueprint.before_request_funcs.setdefault(None, [])
    hooks[:] = [push_rq_connection if f is web.push_rq_connection else f for f in hooks]
    web.push_rq_connection = push_rq_connection
