"""The API under more than one path prefix, for clients written against other servers.

Every route is written once, under ``/v1`` (OpenAI's paths); :func:`mount_aliases` then adds the
same rules, to the same endpoints and view functions, under each alias prefix.
"""

from __future__ import annotations

from flask import Flask
from werkzeug.routing import Rule

#: Where the routes are written.
HOME = "/v1"

#: Where they are served as well: DB-GPT's model API server (``/api/v1``) and OpenVINO Model
#: Server (``/v3``).
ALIASES = ("/api/v1", "/v3")


def mount_aliases(app: Flask) -> None:
    """Serve every ``/v1/...`` rule registered so far under each alias prefix too.

    The copies keep the endpoint (so ``url_for``, logs and metrics see one endpoint per view),
    the methods and every other rule option. Call it after registering the blueprints.
    """
    for rule in list(app.url_map.iter_rules()):
        if not rule.rule.startswith(HOME + "/"):
            continue
        for prefix in ALIASES:
            alias = Rule(
                prefix + rule.rule.removeprefix(HOME),
                **rule.get_empty_kwargs(),
                websocket=rule.websocket,
                merge_slashes=rule.merge_slashes,
            )
            # Flask answers OPTIONS itself for its rules; the copy must too.
            alias.provide_automatic_options = getattr(rule, "provide_automatic_options", False)
            app.url_map.add(alias)
