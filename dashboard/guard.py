"""Who may use rq-dashboard, and how: a login beyond loopback, and no state change by ``GET``.

rq-dashboard 0.9 has HTTP basic auth of its own (``--username``/``--password``), off by default, and
listens on 0.0.0.0 by default; its "requeue every failed job" route answers ``GET``, so any web page
a logged-in browser opens could fire it (an ``<img src>`` is enough). Here:

- :func:`check_exposure` refuses to start on a non-loopback address without a password;
- :func:`guard_actions` lets a route that changes state (every rule that takes ``POST``) run only
  for a ``POST`` carrying ``X-Requested-With`` (what the dashboard's own jQuery ``$.post`` sends):
  a ``GET`` is 405, and a cross-site form cannot set the header (a cross-site script that sets
  it needs a CORS preflight, which the dashboard never answers), so it is 403.
"""

from __future__ import annotations

import ipaddress

from flask import Flask, abort, request

#: The header jQuery sets on its same-origin requests; a plain HTML form cannot send it.
ACTION_HEADER = "X-Requested-With"

#: Host names that resolve to loopback wherever the dashboard runs.
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def is_loopback(bind: str) -> bool:
    """True when ``bind`` (an address or host name) is reachable from this machine only."""
    host = bind.strip().strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # any other name may resolve to a public address


def check_exposure(bind: str, password: str | None) -> None:
    """``SystemExit`` when the dashboard would listen beyond loopback without a login."""
    if not password and not is_loopback(bind):
        raise SystemExit(
            f"bin/dashboard: refusing to listen on {bind} without a login: anyone who reaches it could"
            " read every prompt and completion and delete or requeue jobs. Set"
            " MODELYARD_DASHBOARD_PASSWORD (and MODELYARD_DASHBOARD_USERNAME, default admin), or"
            " --bind 127.0.0.1."
        )


def guard_actions(app: Flask) -> Flask:
    """Make ``app``'s state-changing routes answer only a same-origin ``POST`` (see the module)."""

    @app.before_request
    def _actions_by_post_only() -> None:
        rule = request.url_rule
        if rule is None or "POST" not in (rule.methods or ()):
            return
        if request.method != "POST":
            abort(405)
        if not request.headers.get(ACTION_HEADER):
            abort(403, description=f"actions need a POST with the {ACTION_HEADER} header")

    @app.after_request
    def _no_framing(response):
        # A page of another site must not frame the dashboard and trick clicks on its buttons.
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    return app
