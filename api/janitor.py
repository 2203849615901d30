"""Finding the jobs of dead workers, fast, so that no client waits for a worker that is gone.

rq notices an abandoned job only when its lease runs out (job timeout + 60 s for in-process
workers). A worker's heartbeat key expires within ``heartbeat_ttl`` seconds of its death, so the
janitor checks the started jobs of every model against the heartbeats of their workers, and puts
the jobs their slots had taken but not started back in their queues (shared/takings.py).

A missing key proves a death only if the worker had a heartbeat's time to write it: after Redis
restarts (empty, or from a snapshot with stale keys and started jobs) live workers have no key
until they beat again. So the janitor judges nobody until a heartbeat TTL has passed since Redis
started (its ``uptime_in_seconds``, read with each look) and since the janitor's own last Redis
error.
"""

from __future__ import annotations

import logging
import threading
import time

from redis import Redis, RedisError
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty
from rq.utils import as_text, parse_composite_key

from shared import keys
from shared.catalog import ModelCatalog
from shared.events import WorkerLostEvent, encode_event
from shared.jobs import BadMessage, decode_job
from shared.status import WorkerStatus
from shared.takings import Takings

log = logging.getLogger(__name__)

#: Seconds a job may have been started before its worker's beat must list it: a beat taken as the
#: job starts may not show it yet.
_LISTED_WITHIN_S = 1.0


def _runs(raw_status: bytes | None, job: Job) -> bool:
    """Whether the job's worker is alive and, by its latest beat, still runs the job.

    A live worker that does not list a job it started well before its beat has lost it: the
    job came back from a Redis snapshot taken while it ran, and nothing would ever end it.
    """
    if raw_status is None:
        return False
    status = WorkerStatus.decode(raw_status)
    if status is None or status.running is None:
        return True  # a worker of another version: its key is all it tells
    running, beat_at = status.running, status.beat_at
    started = job.started_at.timestamp() if job.started_at else beat_at
    return job.id in running or beat_at < started + _LISTED_WITHIN_S


def _listed(raw_status: bytes | None, job_id: str) -> bool:
    """Whether a live worker's beat lists ``job_id`` as running (or cannot tell: another version)."""
    status = WorkerStatus.decode(raw_status)
    return status is not None and (status.running is None or job_id in status.running)


def _reply_to(job: Job) -> str | None:
    """The channel of the API process that waits for the job; None for a job not of ours."""
    try:
        return decode_job(job.kwargs.get("payload")).reply_to
    except BadMessage:
        return None


class Janitor:
    """A daemon thread; one API process at a time sweeps (a short Redis lock), every ``interval``.

    ``heartbeat_ttl`` is the workers' (``MODELYARD_HEARTBEAT_TTL``): how long a live worker may
    go without a key after Redis came back.
    """

    def __init__(
        self,
        redis: Redis,
        catalog: ModelCatalog,
        owner: str,
        interval: float = 1.0,
        *,
        heartbeat_ttl: float,
    ) -> None:
        self._redis = redis
        self._catalog = catalog
        self._owner = owner
        self._interval = interval
        self._heartbeat_ttl = heartbeat_ttl
        #: ``time.monotonic()`` before which the janitor judges no worker dead.
        self._judge_after = 0.0
        self._run_id: str | None = None
        #: Started jobs without their worker's record, by id: when a sweep first saw each.
        self._unowned_since: dict[str, float] = {}
        self._takings = Takings(redis)
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

    @property
    def judging(self) -> bool:
        """Whether a missing heartbeat key now proves a worker dead (see the module's docstring)."""
        return time.monotonic() >= self._judge_after

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                pipe = self._redis.pipeline(transaction=False)
                pipe.info("server")
                pipe.set(keys.janitor_lock_key(), self._owner, nx=True, px=int(self._interval * 900))
                server, locked = pipe.execute()
                self._note_server(server)
                if locked and self.judging:
                    self.sweep()
            except RedisError as exc:
                self._distrust(exc)

    def _note_server(self, server: dict) -> None:
        """Wait until Redis has run a heartbeat TTL: live workers had the time to beat on it."""
        run_id, uptime = server.get("run_id"), float(server.get("uptime_in_seconds", 0))
        if self._run_id is not None and run_id != self._run_id:
            log.warning("Redis restarted %.0fs ago; judging no worker for a heartbeat TTL", uptime)
        self._run_id = run_id
        self._judge_after = max(self._judge_after, time.monotonic() + self._heartbeat_ttl - uptime)

    def _distrust(self, exc: RedisError) -> None:
        """A failed look or sweep: whatever Redis went through, workers get a TTL to beat again."""
        if self.judging:
            log.info("janitor lost Redis (%s); judging no worker for a heartbeat TTL", exc)
        self._judge_after = time.monotonic() + self._heartbeat_ttl

    def sweep(self) -> list[str]:
        """Fail every started job whose worker stopped beating and tell its API process; returns their ids."""
        lost: list[str] = []
        # rq keeps one started registry per queue, and a model has one queue per band: every
        # registry is read in one round trip, and only those holding jobs are looked at further.
        registries = [
            (
                spec.name,
                StartedJobRegistry(
                    name,
                    connection=self._redis,
                    serializer=JSONSerializer,
                    # Failure handling runs here, off the main thread, where SIGALRM cannot be used.
                    death_penalty_class=TimerDeathPenalty,
                ),
            )
            for spec in self._catalog
            for name in keys.model_queue_names(spec.name)
        ]
        pipe = self._redis.pipeline(transaction=False)
        for _, registry in registries:
            pipe.zrange(registry.key, 0, -1)
        seen: set[str] = set()
        for (model, registry), members in zip(registries, pipe.execute(), strict=True):
            if members:
                entries = [parse_composite_key(as_text(member)) for member in members]
                seen.update(job_id for job_id, _ in entries)
                lost += self._sweep_registry(model, registry, entries)
        self._unowned_since = {job_id: at for job_id, at in self._unowned_since.items() if job_id in seen}
        self._return_takings()
        return lost

    def _return_takings(self) -> None:
        """Put the jobs that slots of dead workers took and never started back in their queues
        (shared/takings.py), and forget those slots."""
        takers = {
            as_text(slot): as_text(worker) for slot, worker in self._redis.hgetall(keys.takers_key()).items()
        }
        if not takers:
            return
        workers = sorted(set(takers.values()))
        alive = {
            w
            for w, status in zip(
                workers, self._redis.mget([keys.worker_key(w) for w in workers]), strict=True
            )
            if status
        }
        for slot, worker in takers.items():
            if worker not in alive and (returned := self._takings.give_back(slot, forget=True)):
                log.warning(
                    "%d jobs taken by slot %s of the lost worker %s went back to their queues",
                    returned,
                    slot,
                    worker,
                )

    def _sweep_registry(
        self, model: str, registry: StartedJobRegistry, entries: list[tuple[str, str]]
    ) -> list[str]:
        # One round trip for every job, one for every distinct worker (not one per job each).
        ids = [job_id for job_id, _ in entries]
        fetched = Job.fetch_many(ids, connection=self._redis, serializer=JSONSerializer)
        # A job's worker process is the one its slot recorded as it started the job: never parsed
        # out of a name.
        jobs = {job.id: job for job in fetched if job is not None}
        owners = {job_id: owner for job_id, job in jobs.items() if (owner := keys.job_worker_id(job.meta))}
        workers = sorted(set(owners.values()))
        statuses = dict(zip(workers, self._redis.mget([keys.worker_key(w) for w in workers]), strict=True))
        unowned = [job_id for job_id in ids if job_id not in owners]
        abandoned = set(self._abandoned(model, unowned)) if unowned else set()
        orphans = [
            (job_id, execution)
            for job_id, execution in entries
            if job_id in abandoned or (job_id in owners and not _runs(statuses[owners[job_id]], jobs[job_id]))
        ]
        if not orphans:
            return []
        # Expire the orphans' leases now and let rq's own cleanup move them to its failed registry.
        self._redis.zadd(registry.key, {f"{job_id}:{execution}": 1 for job_id, execution in orphans}, xx=True)
        registry.cleanup(timestamp=2)
        pipe = self._redis.pipeline(transaction=False)
        for job_id, _ in orphans:
            job = jobs.get(job_id)
            reply_to = _reply_to(job) if job else None
            log.warning("job %s lost its worker %s", job_id, owners.get(job_id, "(not recorded)"))
            if reply_to:
                pipe.publish(reply_to, encode_event(WorkerLostEvent(job_id=job_id)))
        pipe.execute()
        return [job_id for job_id, _ in orphans]

    def _abandoned(self, model: str, unowned: list[str]) -> list[str]:
        """The started jobs without a worker record that no live worker of ``model`` has run for a
        heartbeat TTL.

        rq lists a job as started in one write and the slot's record follows in the next; a Redis
        failover between the two (the replica had the first write only) leaves a job that names no
        worker and that no worker runs. rq would hold it for its whole lease."""
        now = time.monotonic()
        workers = self._redis.zrangebyscore(keys.model_workers_key(model), time.time(), "+inf")
        statuses = self._redis.mget([keys.worker_key(as_text(w)) for w in workers]) if workers else []
        abandoned = []
        for job_id in unowned:
            if any(_listed(status, job_id) for status in statuses):
                self._unowned_since.pop(job_id, None)
            elif now - self._unowned_since.setdefault(job_id, now) >= self._heartbeat_ttl:
                abandoned.append(job_id)
        return abandoned
