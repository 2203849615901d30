"""The Flask app factory: ``gunicorn 'api.app:create_app()'``."""

from __future__ import annotations

from collections.abc import Sequence

from flask import Flask, g, request

from api import observe, routes
from api.aging import Ager
from api.auth import check_api_key
from api.batches.files import FileStore
from api.batches.runner import BatchRunner
from api.batches.store import BatchStore
from api.body_buffer import BufferedBody
from api.coalesce import EmbedCoalescer
from api.dispatch import Dispatcher
from api.errors import register_error_handlers
from api.fdlimit import raise_open_files_limit
from api.janitor import Janitor
from api.metrics import ApiMetrics
from api.middleware import DispatchMiddleware
from api.observe import RecordMiddleware
from api.ratelimit import RateLimiter
from api.reply_router import ReplyRouter
from api.routes.prefixes import mount_aliases
from api.services import EXTENSION, Services
from shared.catalog import ModelCatalog
from shared.config import Settings
from shared.connection import connect
from shared.logs import setup_logging


def create_app(settings: Settings | None = None, middleware: Sequence[DispatchMiddleware] = ()) -> Flask:
    """Build an app; settings default to the ``MODELYARD_*`` environment.

    ``middleware`` (a test's or a benchmark's probes) runs after the app's own dispatcher
    middleware: the request record, then the rate limiter's token charge.
    """
    settings = settings or Settings.from_env()
    setup_logging(settings.log_level, settings.log_format)
    app = Flask(__name__)
    # BufferedBody enforces each path's limit; Flask's must not be lower than an upload's.
    app.config["MAX_CONTENT_LENGTH"] = max(settings.max_body_bytes, settings.file_max_bytes)
    app.json.sort_keys = False
    app.json.ensure_ascii = False

    raise_open_files_limit()  # one descriptor per client connection: a burst needs thousands
    redis = connect(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        pool_timeout=settings.redis_pool_timeout,
    )
    catalog = ModelCatalog.load(settings.models_file)
    # The subscription holds its connection for good: its own client, so a burst that takes every
    # pooled connection can never keep the router from (re)subscribing.
    router = ReplyRouter(connect(settings.redis_url, max_connections=2, name="modelyard-api-replies"))
    limiter = RateLimiter(redis, settings.rate_limit_rpm, settings.rate_limit_tpm)
    dispatcher = Dispatcher(
        redis,
        catalog,
        router,
        retention_s=settings.job_retention_s,
        middleware=[RecordMiddleware(), limiter, *middleware],
    )
    files, batches = FileStore(settings.files_dir), BatchStore(redis)
    batch_runner = BatchRunner(
        app,
        redis,
        batches,
        files,
        owner=router.channel,
        window=settings.batch_window,
        busy_window=settings.batch_window_busy,
        max_lines=settings.batch_max_lines,
        request_timeout=settings.request_timeout,
    )
    app.extensions[EXTENSION] = Services(
        settings=settings,
        redis=redis,
        catalog=catalog,
        router=router,
        dispatcher=dispatcher,
        coalescer=EmbedCoalescer(dispatcher),
        janitor=Janitor(redis, catalog, owner=router.channel, heartbeat_ttl=settings.heartbeat_ttl),
        limiter=limiter,
        ager=None
        if settings.priority_aging_s is None
        else Ager(redis, catalog, owner=router.channel, aging_s=settings.priority_aging_s),
        files=files,
        batches=batches,
        batch_runner=batch_runner,
    )
    observe.install(app, ApiMetrics(redis, catalog))  # first hook: every request is counted

    @app.before_request
    def _start_background() -> None:
        # Threads start in the serving process (after gunicorn forks), not in the factory.
        app.extensions[EXTENSION].janitor.start()
        batch_runner.start()
        if app.extensions[EXTENSION].ager is not None:
            app.extensions[EXTENSION].ager.start()

    @app.before_request
    def _authenticate() -> None:
        if not request.path.startswith(("/health", "/openapi.json")):
            check_api_key(settings.api_keys)

    @app.after_request
    def _job_id_header(response):
        if "job_id" in g:
            response.headers["X-Job-Id"] = g.job_id
        if "band" in g:  # the band the job ran in (a high one asked for without the right: normal)
            response.headers["X-Priority-Band"] = g.band
        return response

    register_error_handlers(app)
    for blueprint in routes.blueprints():
        app.register_blueprint(blueprint)
    mount_aliases(app)  # /api/v1 and /v3 serve what /v1 does
    # Bodies are read whole, by a deadline, before Flask runs: a stalled client costs no view.
    app.wsgi_app = BufferedBody(
        app.wsgi_app,
        max_bytes=settings.max_body_bytes,
        timeout=settings.body_timeout,
        upload_max_bytes=settings.file_max_bytes,
    )
    return app
