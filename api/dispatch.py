"""Admission, enqueueing and cancelling: the path of every job through Redis (waiting: api/job_run.py)."""

from __future__ import annotations

import json
import logging
import math
import queue
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from redis import Redis, RedisError
from redis.client import Pipeline
from rq import Queue
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from api.cancels import CancelBacklog
from api.errors import RedisUnavailable, busy
from api.fleet import wait_estimate
from api.job_run import JobRun
from api.middleware import DispatchMiddleware, MiddlewareChain, RequestContext
from api.reply_router import Event, ReplyRouter
from shared import keys
from shared.catalog import ModelCatalog, ModelKind, ModelSpec
from shared.connection import PoolExhausted
from shared.doorbell import ring, ring_queue
from shared.errors import (
    Cancelled,
    InternalError,
    InvalidRequest,
    ModelNotFound,
    ModelyardError,
    RateLimited,
    ServiceUnavailable,
)
from shared.events import DoneEvent, ErrorEvent, encode_event
from shared.jobs import AnyJob, BadMessage, decode_job, decode_result
from shared.priority import BANDS, DEFAULT_BAND, LANES_PER_BAND, Band, band_index

log = logging.getLogger(__name__)

#: Retry-After for a model with no live worker: about one worker heartbeat.
_NO_WORKER_RETRY_S = 5


#: Remove a job from its queue (KEYS[1]) and delete its hash (KEYS[2]), only if it was still queued.
_TAKE_BACK_LUA = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
    redis.call('DEL', KEYS[2])
    return 1
end
return 0
"""


def _bands_up_to(band: Band) -> tuple[Band, ...]:
    """``band`` and the bands more urgent than it, most urgent first."""
    return BANDS[: band_index(band) + 1]


def _admitting(model: str, band: Band, lane: int) -> list[str]:
    """The queues whose jobs count against a job's ``max_queue``: every lane of the bands above its
    own, and its own lane (so ``max_queue`` is per lane: one key's flood fills its lane only)."""
    above = keys.model_queue_names(model, BANDS[: band_index(band)])
    return [*above, keys.queue_name(model, band, lane)]


def _retry_after(wait_s: float | None) -> int:
    """Whole seconds for Retry-After: the estimate, kept within [1, 300]; 5 before any estimate."""
    if wait_s is None:
        return 5
    return max(1, min(300, math.ceil(wait_s)))


@dataclass
class Submission:
    """A job this process enqueued and is waiting for."""

    job: AnyJob
    inbox: queue.SimpleQueue[Event]


class Dispatcher:
    """Turns validated requests into rq jobs and their events into results."""

    def __init__(
        self,
        redis: Redis,
        catalog: ModelCatalog,
        router: ReplyRouter,
        *,
        retention_s: int = 60,
        middleware: Iterable[DispatchMiddleware] = (),
    ) -> None:
        self.redis = redis
        self.catalog = catalog
        self.router = router
        #: Cross-cutting work on every job (api/middleware.py), in the app factory's order.
        self.middleware = MiddlewareChain(middleware)
        #: Seconds an ended job (its prompt and output) stays in Redis: ``Settings.job_retention_s``.
        self.retention_s = retention_s
        self._queues: dict[str, Queue] = {}
        self._live: dict[str, int] = {}
        self._take_back_script = redis.register_script(_TAKE_BACK_LUA)
        #: Jobs answered while Redis was unreachable: cancelled as soon as it answers again.
        self._unsent_cancels = CancelBacklog(self._cancel)
        router.on_abandon(self._unsent_cancels.add)

    # -- admission -------------------------------------------------------------------------
    def resolve(self, name: str, kind: ModelKind, param: str = "model") -> ModelSpec:
        """The model ``name`` if it exists and serves ``kind``.

        Whether it has a live worker and room in its queue is checked by :meth:`run`, in the
        same round trip as the enqueue.
        """
        spec = self.catalog.resolve(name)
        if spec is None:
            raise ModelNotFound(f"The model '{name}' does not exist", param=param)
        if spec.kind is not kind:
            raise InvalidRequest(
                f"The model '{name}' is a {spec.kind.value} model; this endpoint needs a {kind.value} model",
                param=param,
                code="model_not_supported",
            )
        return spec

    def _refusal(self, spec: ModelSpec, alive: int, queued: int) -> ModelyardError | None:
        """Why a job that found ``alive`` live workers and ``queued`` jobs ahead may not stay queued."""
        if not alive:
            return ServiceUnavailable(
                f"The model '{spec.name}' has no live worker; start one with `bin/worker {spec.name}`",
                retry_after=_NO_WORKER_RETRY_S,
            )
        if queued >= spec.max_queue:
            wait = wait_estimate(self.redis, spec, queued, alive)
            return RateLimited(
                f"The model '{spec.name}' has {queued} requests queued (its limit); retry later",
                code="queue_full",
                retry_after=_retry_after(wait),
            )
        return None

    def live_workers(self, model: str) -> int:
        """Live workers of ``model`` at its latest enqueue in this process."""
        return self._live.get(model, 0)

    @staticmethod
    def new_job_id() -> str:
        return uuid.uuid4().hex

    # -- running a job ---------------------------------------------------------------------
    def run(self, job: AnyJob, context: RequestContext) -> JobRun:
        """Submit ``job`` for the request of ``context``; the one way a job is run::

            with dispatcher.run(job, context) as run:
                result = run.wait()  # or: for event in run.events(): ...

        Raises the job's refusal (no live worker, a full queue, Redis down, or a middleware's)
        before anything waits; the middleware's hooks run around the submit and the wait.
        """
        self.middleware.before_submit(job, context)
        submission = self._submit(job)
        self.middleware.after_submit(submission.job, context)
        return JobRun(self, submission, context)

    def _submit(self, job: AnyJob) -> Submission:
        """Register for the job's events, then admit and enqueue it (:meth:`enqueue`).

        The job replies to the channel of the router session it was registered in (whatever
        ``job.reply_to`` said): that channel's subscriber is what tells workers someone waits.
        """
        channel, inbox = self.router.register(job.job_id)
        job = job.model_copy(update={"reply_to": channel})
        try:
            self.enqueue(job, f"{job.type} {job.model}")
        except BaseException:
            self.router.unregister(job.job_id)
            raise
        return Submission(job=job, inbox=inbox)

    def enqueue(
        self, job: AnyJob, description: str, also: Callable[[Pipeline], object] | None = None
    ) -> None:
        """Admit ``job`` and enqueue it on the queue of its model, band and lane; the one admission.

        One transaction pushes the job, runs ``also`` on the pipeline (more writes that must go with
        the job, e.g. a background response's entry in the active set) and reads the model's live
        workers and the queues of the job's band and the bands above it, so admission costs no round
        trip of its own and those bands never hold more than ``max_queue`` ahead of a job. A job that
        may not stay (no live worker, a full queue) is taken back out and its error raised, unless a
        worker has already taken it; what ``also`` wrote is the caller's to undo.
        """
        spec = self.catalog.resolve(job.model)
        assert spec is not None, "jobs are made for resolved models"
        budget = max(1, math.ceil(job.deadline - time.time()))
        queue = self.queue(job.model, job.band, job.lane)
        admitting = _admitting(job.model, job.band, job.lane)
        try:
            # One round trip: rq registers the queue, saves and pushes the job (it starts the
            # transaction itself), then ``also``, then the admission reads.
            pipe = self.redis.pipeline()
            queue.enqueue(
                keys.JOB_FUNCTION,
                payload=job.model_dump(mode="json"),
                job_id=job.job_id,
                description=description,
                ttl=budget,
                job_timeout=budget + 5,
                result_ttl=self.retention_s,
                failure_ttl=self.retention_s,
                pipeline=pipe,
            )
            ring(pipe, job.model, job.band)
            if also is not None:
                also(pipe)
            if job.band != "batch":  # batches yield to interactive traffic (api/batches/runner.py)
                pipe.set(keys.interactive_key(), 1, px=keys.INTERACTIVE_TTL_MS)
            pipe.zcount(keys.model_workers_key(job.model), time.time(), "+inf")
            # The jobs of the bands above it and of its own lane: a flood of low-band work does
            # not make a high request's queue full, nor one key's flood another key's.
            for name in admitting:
                pipe.llen(keys.RQ_QUEUE_PREFIX + name)
            replies = pipe.execute()
            alive = int(replies[-1 - len(admitting)])
            queued = sum(int(n) for n in replies[len(replies) - len(admitting) :]) - 1
            self._live[job.model] = alive
            refusal = self._refusal(spec, alive, queued)
            if refusal is not None and self._take_back(queue, job.job_id):
                raise refusal
        except PoolExhausted as exc:  # Redis is up; this process has too much in flight
            raise busy(exc) from exc
        except RedisError as exc:
            # The transaction may have run before the connection failed: the job must not run.
            self._unsent_cancels.add([job.job_id])
            raise RedisUnavailable() from exc

    def _take_back(self, queue: Queue, job_id: str) -> bool:
        """Remove a just-enqueued job and its rq hash; False if a worker took it meanwhile."""
        return bool(self._take_back_script(keys=[queue.key, Job.key_for(job_id)], args=[job_id]))

    def queue(self, model: str, band: Band = DEFAULT_BAND, lane: int = 0) -> Queue:
        """The rq queue of ``model`` for ``band`` and ``lane`` (default: the normal band's lane 0)."""
        return self.named_queue(keys.queue_name(model, band, lane))

    def named_queue(self, name: str) -> Queue:
        """The rq queue called ``name`` (one of :func:`shared.keys.model_queue_names`)."""
        if name not in self._queues:
            self._queues[name] = Queue(name, connection=self.redis, serializer=JSONSerializer)
        return self._queues[name]

    def queue_position(self, job: AnyJob) -> int | None:
        """Jobs ahead of ``job`` (0: next), or None once a worker took it (see :meth:`jobs_ahead`)."""
        try:
            origin = self.redis.hget(Job.key_for(job.job_id), "origin")
            if origin is None:
                return None
            name = origin.decode() if isinstance(origin, bytes) else origin
            return self.jobs_ahead(job.model, name, job.job_id)
        except RedisError:
            return None

    def jobs_ahead(self, model: str, origin: str, job_id: str) -> int | None:
        """Jobs that start before the queued job ``job_id`` of ``model``'s queue ``origin``; None if it
        is not queued there (a worker took it).

        Every job of the bands above its own, the jobs ahead of it in its lane, and from each other
        lane of its band as many jobs as are ahead of it in its own, at most (slots take the lanes
        of a band round robin). Lower bands never go first. One round trip.
        """
        place = keys.queue_place(model, origin)
        if place is None:
            return None
        band, lane = place
        names = keys.model_queue_names(model, _bands_up_to(band))
        pipe = self.redis.pipeline(transaction=False)
        pipe.lpos(keys.RQ_QUEUE_PREFIX + origin, job_id)
        for name in names:
            pipe.llen(keys.RQ_QUEUE_PREFIX + name)
        position, *lengths = pipe.execute()
        if position is None:
            return None
        own_band = lengths[-LANES_PER_BAND:]
        above = sum(lengths[:-LANES_PER_BAND])
        peers = sum(min(int(n), position) for i, n in enumerate(own_band) if i != lane)
        return int(above) + int(position) + peers

    # -- waiting ---------------------------------------------------------------------------
    def requeue(self, job: AnyJob) -> int | None:
        """Put a job whose worker died back at the front of its queue; returns its new run
        (:data:`shared.keys.JOB_RUN_FIELD`: only that run's events count now), None if it cannot.

        Even with no live worker left: like any queued job it waits for one (a restarted worker,
        typically) until its deadline.
        """
        key = Job.key_for(job.job_id)
        try:
            if self.redis.exists(keys.cancel_key(job.job_id)):
                return None
            # The failed registry of the queue it was taken from (aging may have moved it up).
            origin = self.redis.hget(key, "origin")
            name = origin.decode() if isinstance(origin, bytes) else origin
            queue = self.named_queue(name) if name else self.queue(job.model, job.band, job.lane)
            # Aging counts from the requeue (rq stamps a new enqueued_at), not from when the job
            # last changed band: dropped while the job is in no queue, so no sweep sees it stale.
            pipe = self.redis.pipeline()
            pipe.hdel(key, keys.BAND_SINCE_FIELD)
            pipe.hincrby(key, keys.JOB_RUN_FIELD, 1)
            run = int(pipe.execute()[-1])
            queue.failed_job_registry.requeue(job.job_id, at_front=True)
            pipe = self.redis.pipeline(transaction=False)
            ring_queue(pipe, job.model, queue.name)
            pipe.execute()
        except (RedisError, NoSuchJobError, InvalidJobOperation) as exc:
            log.warning("could not requeue job %s: %s", job.job_id, exc)
            return None
        log.info("requeued job %s after its worker died (run %d)", job.job_id, run)
        return run

    def done_result(self, event: DoneEvent):
        """The result of a done job, from the event or, when it was too big, from Redis."""
        if event.result is not None:
            return event.result
        raw = self.redis.get(keys.result_key(event.job_id))
        if raw is None:
            raise InternalError("the job's result expired before it was read")
        return decode_result(json.loads(raw))

    # -- cancellation ----------------------------------------------------------------------
    def cancel(self, job_id: str) -> None:
        """Remove the job if it is queued, stop it if it runs; safe to call on a finished job.

        If Redis cannot be reached, the cancellation is sent again as soon as it can.
        """
        try:
            self._cancel(job_id)
        except RedisError as exc:
            log.warning("could not cancel job %s (%s); retrying when Redis answers", job_id, exc)
            self._unsent_cancels.add([job_id])

    def _cancel(self, job_id: str) -> None:
        """:meth:`cancel`, raising :class:`RedisError` when Redis cannot be reached."""
        try:
            self.redis.set(keys.cancel_key(job_id), 1, ex=keys.CANCEL_TTL_S)
            rq_job = Job.fetch(job_id, connection=self.redis, serializer=JSONSerializer)
            status = rq_job.get_status()
            if status == JobStatus.QUEUED:
                rq_job.cancel()
                self.redis.expire(rq_job.key, self.retention_s)  # rq keeps a cancelled job's hash
                # No worker will ever speak for this job: tell whoever waits for it (if anyone).
                reply_to = decode_job(rq_job.kwargs.get("payload")).reply_to
                if reply_to:
                    error = Cancelled("the request was cancelled while it was queued")
                    self.redis.publish(reply_to, encode_event(ErrorEvent.from_error(job_id, error)))
            elif status == JobStatus.STARTED:
                send_stop_job_command(self.redis, job_id, serializer=JSONSerializer)
        except (NoSuchJobError, InvalidJobOperation, BadMessage):  # BadMessage: not a job of ours
            pass
