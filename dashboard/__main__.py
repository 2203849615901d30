"""``python -m dashboard`` (``bin/dashboard``): rq-dashboard's own command line, with the project's
Redis connections, a login beyond loopback, and a few fixes.

- rq-dashboard 0.9 lists workers with ``Worker.all(connection=...)``, without the serializer that
  ``--json`` configures, so the worker's current job is read with pickle: ``workers.json`` answers
  500 (the workers page stays at "Loading...") whenever some worker runs a job. Here ``Worker.all``
  uses the dashboard's serializer.
- Redis clients come from :func:`shared.connection.connect` (``dashboard/connection.py``): TLS, ACL
  users and Sentinel URLs work as for the API and the workers. Without ``--redis-url`` the
  dashboard uses ``MODELYARD_REDIS_URL`` (so a password in it never shows in ``ps``).
- The login is rq-dashboard's basic auth, fed from ``MODELYARD_DASHBOARD_USERNAME`` and
  ``MODELYARD_DASHBOARD_PASSWORD``; without a password it listens on loopback only
  (``dashboard/guard.py``), and state-changing actions take a same-origin ``POST`` only.

Everything else is rq-dashboard unchanged, options included.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import rq_dashboard.cli as cli
import rq_dashboard.web as web

from dashboard import connection, guard
from shared.config import Settings

_ENV = "RQ_DASHBOARD_"


class _Worker(web.Worker):
    @classmethod
    def all(cls, *args, **kwargs):
        kwargs.setdefault("serializer", web.config.serializer)
        return super().all(*args, **kwargs)


def patch() -> None:
    """Make rq-dashboard's views list workers with its configured serializer, connect through the
    project's factory, and guard its actions."""
    web.Worker = _Worker
    connection.patch()
    make_flask_app = cli.make_flask_app
    if not getattr(make_flask_app, "guarded", False):

        def guarded_app(*args, **kwargs):
            return guard.guard_actions(make_flask_app(*args, **kwargs))

        guarded_app.guarded = True
        cli.make_flask_app = guarded_app


def configure(argv: Sequence[str], environ: dict[str, str], settings: Settings) -> None:
    """Fill rq-dashboard's environment from the settings (its command line wins), then refuse to
    listen beyond loopback without a password."""
    if settings.dashboard_password is not None:
        environ.setdefault(_ENV + "USERNAME", settings.dashboard_username)
        environ.setdefault(_ENV + "PASSWORD", settings.dashboard_password.get_secret_value())
    environ.setdefault(_ENV + "REDIS_URL", settings.redis_url)
    # rq-dashboard's own parse of the command line and its RQ_DASHBOARD_* variables.
    saved = dict(os.environ)
    os.environ.update(environ)
    try:
        ctx = cli.run.make_context("rq-dashboard", list(argv), auto_envvar_prefix=_ENV.rstrip("_"))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    params = ctx.params
    password = params.get("password") if params.get("username") else None
    guard.check_exposure(params["bind"], password)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    environ = dict(os.environ)
    configure(args, environ, Settings.from_env())
    os.environ.update(environ)
    patch()
    cli.run.main(args=args, prog_name="rq-dashboard", auto_envvar_prefix=_ENV.rstrip("_"))


if __name__ == "__main__":
    main()
