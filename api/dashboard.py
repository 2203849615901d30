"""``bin/dashboard``: rq-dashboard's own command line, with one fix for JSON-serialized jobs.

rq-dashboard 0.9 lists workers with ``Worker.all(connection=...)``, without the serializer that
``--json`` configures, so the worker's current job is read with pickle: ``workers.json`` answers 500
(the workers page stays at "Loading...") whenever some worker runs a job. Here ``Worker.all`` uses
the dashboard's serializer. Everything else is rq-dashboard unchanged, options included.
"""

from __future__ import annotations

import rq_dashboard.web as web
from rq_dashboard.cli import main


class _Worker(web.Worker):
    @classmethod
    def all(cls, *args, **kwargs):
        kwargs.setdefault("serializer", web.config.serializer)
        return super().all(*args, **kwargs)


def patch() -> None:
    """Make rq-dashboard's views list workers with its configured serializer."""
    web.Worker = _Worker


if __name__ == "__main__":
    patch()
    main()
