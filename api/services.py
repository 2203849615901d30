"""The per-app objects views use, kept in ``app.extensions`` (no module state)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import current_app
from redis import Redis

from api.aging import Ager
from api.batches.files import FileStore
from api.batches.store import BatchStore
from api.coalesce import EmbedCoalescer
from api.dispatch import Dispatcher
from api.janitor import Janitor
from api.ratelimit import RateLimiter
from api.reply_router import ReplyRouter
from shared.catalog import ModelCatalog
from shared.config import Settings

if TYPE_CHECKING:
    from api.batches.runner import BatchRunner  # it runs views, which import this module

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
    #: Moves long-waiting jobs up a band (None: ``priority_aging_s`` unset, no aging).
    ager: Ager | None = None
    #: The Batch API's files, batch objects and the thread that runs batches (api/batches/).
    files: FileStore | None = None
    batches: BatchStore | None = None
    batch_runner: BatchRunner | None = None

    def close(self) -> None:
        """Stop the background threads (tests build many apps in one process)."""
        self.janitor.stop()
        if self.ager is not None:
            self.ager.stop()
        if self.batch_runner is not None:
            self.batch_runner.stop()
        self.router.stop()


def services() -> Services:
    """The services of the app handling the current request."""
    return current_app.extensions[EXTENSION]
