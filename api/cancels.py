"""Cancellations that could not reach Redis, sent again as soon as it answers.

A request answered while Redis was unreachable (its client left, its deadline passed, the
enqueue failed half-way, its reply subscription broke) may leave its job queued, or in a snapshot
Redis reloads later. Whatever else protects such a job, its cancel marker is the proof a worker
reads first, so it is set as soon as Redis is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from redis import RedisError

from shared import keys

log = logging.getLogger(__name__)

#: Seconds between two attempts while Redis does not answer.
RETRY_S = 0.5

#: Job ids kept at most; past that the oldest are dropped (their deadlines protect them too).
CAPACITY = 10_000


class CancelBacklog:
    """Job ids whose cancellation failed; a daemon thread retries ``send`` until each one succeeds.

    ``send(job_id)`` cancels one job and raises :class:`RedisError` when Redis is unreachable. An
    id is given up after ``keys.CANCEL_TTL_S`` (longer than any deadline: by then workers refuse
    the job as expired anyway). The thread runs only while the backlog is not empty.
    """

    def __init__(self, send: Callable[[str], None]) -> None:
        self._send = send
        self._pending: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, job_ids: Iterable[str]) -> None:
        give_up_at = time.monotonic() + keys.CANCEL_TTL_S
        with self._lock:
            for job_id in job_ids:
                self._pending[job_id] = give_up_at
                self._pending.move_to_end(job_id)
            while len(self._pending) > CAPACITY:
                dropped, _ = self._pending.popitem(last=False)
                log.warning("cancel backlog full: dropping job %s", dropped)
            if self._pending and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._run, name="cancel-backlog", daemon=True)
                self._thread.start()

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def _run(self) -> None:
        while True:
            time.sleep(RETRY_S)
            with self._lock:
                now = time.monotonic()
                for job_id in [job_id for job_id, until in self._pending.items() if until <= now]:
                    del self._pending[job_id]
                batch = list(self._pending)
                if not batch:
                    self._thread = None
                    return
            sent = 0
            for job_id in batch:
                try:
                    self._send(job_id)
                except RedisError:
                    break  # still unreachable: the rest waits for the next round
                sent += 1
                with self._lock:
                    self._pending.pop(job_id, None)
            if sent:
                log.info("sent %d cancellations that had waited for Redis", sent)
