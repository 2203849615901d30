"""The per-app objects views use, kept in ``app.extensions`` (no module state)."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app
from redis import Redis

from api.coalesce import EmbedCoalescer
from api.dispatch import Dispatcher
from api.janitor import Janitor
from api.ratelimit import RateLimiter
from api.replies import ReplyRouter
from shared.config import Settings
from shared.models import ModelCatalog

EXTENSION = "modelyard"


@dataclass
class Services:
    settings: Settings
    redis: Redis
    catalog: ModelCatalog
    router: ReplyRouter
    dispatcher: Dispatcher
    coalescer: EmbedCoalescer
    janitor: Janitor
    limiter: RateLimiter

    def close(self) -> None:
        """Stop the background threads (tests build many apps in one process)."""
        self.janitor.stop()
        self.router.stop()


def services() -> Services:
    """The services of the app handling the current request."""
    return current_app.extensions[EXTENSION]
