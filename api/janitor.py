"""Finding the jobs of dead workers, fast, so that no client waits for a worker that is gone.

rq notices an abandoned job only when its lease runs out (job timeout + 60 s for in-process
workers). A worker's heartbeat key expires within ``heartbeat_ttl`` seconds of its death, so the
janitor checks the started jobs of every model against the heartbeats of their workers.
"""

from __future__ import annotations

import logging
import threading

from redis import Redis, RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty

from shared import keys
from shared.events import WorkerLostEvent, encode_event
from shared.models import ModelCatalog

log = logging.getLogger(__name__)


class Janitor:
    """A daemon thread; one API process at a time sweeps (a short Redis lock), every ``interval``."""

    def __init__(self, redis: Redis, catalog: ModelCatalog, owner: str, interval: float = 1.0) -> None:
        self._redis = redis
        self._catalog = catalog
        self._owner = owner
        self._interval = interval
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="janitor", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                if self._redis.set(
                    keys.janitor_lock_key(), self._owner, nx=True, px=int(self._interval * 900)
                ):
                    self.sweep()
            except RedisError as exc:
                log.debug("janitor skipped a sweep: %s", exc)

    def sweep(self) -> list[str]:
        """Fail every started job whose worker stopped beating and tell its API process; returns their ids."""
        lost: list[str] = []
        for spec in self._catalog:
            registry = StartedJobRegistry(
                keys.queue_name(spec.name),
                connection=self._redis,
                serializer=JSONSerializer,
                # Failure handling runs here, off the main thread, where SIGALRM cannot be used.
                death_penalty_class=TimerDeathPenalty,
            )
            entries = registry.get_job_and_execution_ids(cleanup=False)
            if entries:
                lost += self._sweep_registry(registry, entries)
        return lost

    def _sweep_registry(self, registry: StartedJobRegistry, entries: list[tuple[str, str]]) -> list[str]:
        jobs: dict[str, Job] = {}
        for job_id, _ in entries:
            try:
                jobs[job_id] = Job.fetch(job_id, connection=self._redis, serializer=JSONSerializer)
            except NoSuchJobError:
                continue
        named = [
            (job_id, execution)
            for job_id, execution in entries
            if jobs.get(job_id, None) is not None and jobs[job_id].worker_name
        ]
        if not named:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for job_id, _ in named:
            pipe.exists(keys.worker_key(keys.worker_id_of_slot(jobs[job_id].worker_name)))
        orphans = [entry for entry, alive in zip(named, pipe.execute(), strict=True) if not alive]
        if not orphans:
            return []
        # Expire the orphans' leases now and let rq's own cleanup move them to its failed registry.
        self._redis.zadd(registry.key, {f"{job_id}:{execution}": 1 for job_id, execution in orphans}, xx=True)
        registry.cleanup(timestamp=2)
        pipe = self._redis.pipeline(transaction=False)
        for job_id, _ in orphans:
            reply_to = (jobs[job_id].kwargs.get("payload") or {}).get("reply_to")
            log.warning("job %s lost its worker %s", job_id, jobs[job_id].worker_name)
            if reply_to:
                pipe.publish(reply_to, encode_event(WorkerLostEvent(job_id=job_id)))
        pipe.execute()
        return [job_id for job_id, _ in orphans]
