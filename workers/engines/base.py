"""The contract between rq slot threads and the engine thread of a model."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Protocol

from shared.errors import Cancelled, DeadlineExceeded, InternalError, ModelyardError
from shared.events import DeltaEvent
from shared.jobs import AnyJob, AnyResult
from shared.status import EngineStats, ModelCard


class EventSink(Protocol):
    """Where an engine sends stream events: one call per decode step, one Redis round trip."""

    def publish(self, messages: list[tuple[str, DeltaEvent]]) -> None:
        """Publish each ``(channel, event)`` pair, in order."""


class Ticket:
    """A job handed to an engine: the slot thread waits on it, the engine thread completes it."""

    def __init__(self, job: AnyJob, cancel: threading.Event) -> None:
        self.job = job
        #: Set by anyone (client gone, rq stop-job, deadline); the engine stops the job at its next step.
        self.cancel = cancel
        self._done = threading.Event()
        self._result: AnyResult | None = None
        self._error: ModelyardError | None = None

    def finish(self, result: AnyResult) -> None:
        """Engine side: the job succeeded."""
        self._result = result
        self._done.set()

    def fail(self, error: ModelyardError) -> None:
        """Engine side: the job failed with an error the client should see."""
        self._error = error
        self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float) -> bool:
        """Slot side: block up to ``timeout`` seconds; True once the job is done."""
        return self._done.wait(timeout)

    def outcome(self) -> AnyResult:
        """Slot side: the result of a done job, or its error raised."""
        if self._error is not None:
            raise self._error
        if self._result is None:
            raise InternalError("engine finished a job without a result")
        return self._result


class Engine(ABC):
    """Runs the jobs of one model in batches on a thread of its own."""

    @abstractmethod
    def start(self) -> None:
        """Start the engine thread (the model is already loaded)."""

    @abstractmethod
    def stop(self) -> None:
        """Fail what is still pending and join the engine thread."""

    @abstractmethod
    def submit(self, job: AnyJob, cancel: threading.Event) -> Ticket:
        """Queue a job for the next batch; never blocks on the model."""

    @abstractmethod
    def stats(self) -> EngineStats:
        """A snapshot of its counters (batches, batch sizes, tokens), reported in the worker's heartbeat."""

    def card(self) -> ModelCard:
        """What the model can do, for ``/v1/models`` (the worker adds the checkpoint's time)."""
        return ModelCard()

    @property
    def alive(self) -> bool:
        """Whether the engine thread (kept in ``self._thread``) runs; the heartbeat stops when not."""
        thread = getattr(self, "_thread", None)
        return thread is not None and thread.is_alive()

    @property
    @abstractmethod
    def active(self) -> int:
        """Jobs submitted and not yet done."""


def count_outcome(stats: EngineStats, error: ModelyardError | None) -> None:
    """Count a job that ended with ``error`` (None: it succeeded) in the counter of its outcome."""
    if error is None:
        stats.jobs_done += 1
    elif isinstance(error, Cancelled):
        stats.jobs_cancelled += 1
    elif isinstance(error, DeadlineExceeded):
        stats.jobs_expired += 1
    else:
        stats.jobs_failed += 1
