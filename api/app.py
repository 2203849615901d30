"""The Flask app factory: ``gunicorn 'api.app:create_app()'``."""

from __future__ import annotations

from flask import Flask, g, request

from api import observe, routes
from api.auth import check_api_key
from api.coalesce import EmbedCoalescer
from api.errors import register_error_handlers
from api.janitor import Janitor
from api.metrics import ApiMetrics
from api.observe import MeteredDispatcher
from api.ratelimit import RateLimiter
from api.replies import ReplyRouter
from api.routes.prefixes import mount_aliases
from api.services import EXTENSION, Services
from shared.config import Settings
from shared.connection import connect
from shared.logs import setup_logging
from shared.models import ModelCatalog


def create_app(settings: Settings | None = None) -> Flask:
    """Build an app; settings default to the ``MODELYARD_*`` environment."""
    settings = settings or Settings.from_env()
    setup_logging(settings.log_level, settings.log_format)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    app.json.ensure_ascii = False

    redis = connect(settings.redis_url)
    catalog = ModelCatalog.load(settings.models_file)
    router = ReplyRouter(redis)
    dispatcher = MeteredDispatcher(redis, catalog, router)
    app.extensions[EXTENSION] = Services(
        settings=settings,
        redis=redis,
        catalog=catalog,
        router=router,
        dispatcher=dispatcher,
        coalescer=EmbedCoalescer(dispatcher),
        janitor=Janitor(redis, catalog, owner=router.channel),
        limiter=RateLimiter(redis, settings.rate_limit_rpm, settings.rate_limit_tpm),
    )
    observe.install(app, ApiMetrics(redis, catalog))  # first hook: every request is counted

    @app.before_request
    def _start_background() -> None:
        # Threads start in the serving process (after gunicorn forks), not in the factory.
        app.extensions[EXTENSION].janitor.start()

    @app.before_request
    def _authenticate() -> None:
        if not request.path.startswith(("/health", "/openapi.json")):
            check_api_key(settings.api_keys)

    @app.after_request
    def _job_id_header(response):
        if "job_id" in g:
            response.headers["X-Job-Id"] = g.job_id
        return response

    register_error_handlers(app)
    for blueprint in routes.blueprints():
        app.register_blueprint(blueprint)
    mount_aliases(app)  # /api/v1 and /v3 serve what /v1 does
    return app
