"""What the rq job function needs from its process: the engines and the per-job cancel flags.

rq imports the job function by name, so the worker's main installs one :class:`Runtime` at start-up
for :func:`workers.tasks.run_job` to find.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from redis import Redis

from workers.engines.base import Engine
from workers.publisher import RedisEventSink


@dataclass
class Runtime:
    """The loaded engines of this worker process and the cancel flags of its running jobs."""

    redis: Redis
    sink: RedisEventSink
    engines: dict[str, Engine]
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

    @property
    def running(self) -> int:
        """Jobs running in this process now."""
        with self._lock:
            return len(self._cancels)


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
