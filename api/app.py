"""The Flask app factory: ``gunicorn 'api.app:create_app()'``."""

from __future__ import annotations

import logging

from flask import Flask, request

from api import routes
from api.auth import check_api_key
from api.dispatch import Dispatcher
from api.errors import register_error_handlers
from api.replies import ReplyRouter
from api.services import EXTENSION, Services
from shared.config import Settings
from shared.connection import connect
from shared.models import ModelCatalog


def create_app(settings: Settings | None = None) -> Flask:
    """Build an app; settings default to the ``MODELYARD_*`` environment."""
    settings = settings or Settings.from_env()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    app.json.ensure_ascii = False

    redis = connect(settings.redis_url)
    catalog = ModelCatalog.load(settings.models_file)
    router = ReplyRouter(redis)
    app.extensions[EXTENSION] = Services(
        settings=settings,
        redis=redis,
        catalog=catalog,
        router=router,
        dispatcher=Dispatcher(redis, catalog, router),
    )

    @app.before_request
    def _authenticate() -> None:
        if not request.path.startswith("/health"):
            check_api_key(settings.api_keys)

    register_error_handlers(app)
    for blueprint in routes.blueprints():
        app.register_blueprint(blueprint)
    return app
