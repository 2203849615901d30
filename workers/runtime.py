"""What the rq job function needs from its process: the engines, the per-job cancel flags and the
job hooks.

rq imports the job function by name, so the worker's main installs one :class:`Runtime` at start-up
for :func:`workers.tasks.run_job` to find.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from redis import Redis

from shared.jobs import AnyJob
from workers.engines.base import Engine
from workers.publisher import RedisEventSink


class JobHooks:
    """Called by :func:`workers.tasks.run_job` at each step of every job; each one does nothing here.

    A benchmark or test passes a subclass to :func:`workers.main.main` (e.g. to take timing marks).
    Hooks run on the job's slot thread, inline: keep them short, and never raise.
    """

    def job_started(self, job: AnyJob) -> None:
        """rq handed the job over and it was decoded; nothing was checked or run yet."""

    def job_submitted(self, job: AnyJob) -> None:
        """The engine accepted the job (checked, tokenized, waiting for its next batch)."""

    def job_ended(self, job: AnyJob, error: Exception | None) -> None:
        """The job's terminal event was published: its result (``error`` None), or its error
        (a :class:`ModelyardError`, or the exception a crash raised)."""


#: Hooks doing nothing, the default.
NO_HOOKS = JobHooks()


@dataclass
class Runtime:
    """The loaded engines of this worker process and the cancel flags of its running jobs."""

    redis: Redis
    sink: RedisEventSink
    engines: dict[str, Engine]
    hooks: JobHooks = NO_HOOKS
    _cancels: dict[str, threading.Event] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def cancel_flag(self, job_id: str) -> threading.Event:
        """The flag that stops ``job_id``, created when the job starts."""
        with self._lock:
            return self._cancels.setdefault(job_id, threading.Event())

    def cancel(self, job_id: str) -> bool:
        """Stop a running job; False if it does not run here."""
        with self._lock:
            flag = self._cancels.get(job_id)
        if flag is None:
            return False
        flag.set()
        return True

    def release(self, job_id: str) -> None:
        """Forget a finished job's flag."""
        with self._lock:
            self._cancels.pop(job_id, None)

    def running_ids(self) -> list[str]:
        """Ids of the jobs running in this process now (the heartbeat lists them for the janitor)."""
        with self._lock:
            return list(self._cancels)


_installed: Runtime | None = None


def install(runtime: Runtime | None) -> None:
    """Make ``runtime`` the one :func:`current` returns (None uninstalls it)."""
    global _installed
    _installed = runtime


def current() -> Runtime:
    """The runtime installed by the worker's main."""
    if _installed is None:
        raise RuntimeError("no worker runtime installed: jobs run only inside bin/worker")
    return _installed
