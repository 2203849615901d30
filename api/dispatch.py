"""Admission, enqueueing and waiting: the path of every job through Redis."""

from __future__ import annotations

import json
import logging
import math
import queue
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from redis import Redis, RedisError
from rq import Queue
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from api.fleet import wait_estimate
from api.replies import Event, ReplyRouter
from shared import keys
from shared.errors import (
    Cancelled,
    DeadlineExceeded,
    InternalError,
    InvalidRequest,
    ModelNotFound,
    ModelyardError,
    RateLimited,
    ServiceUnavailable,
)
from shared.events import DoneEvent, ErrorEvent, WorkerLostEvent, encode_event
from shared.jobs import EmbedJob, GenerateJob, RerankJob, decode_result
from shared.models import ModelCatalog, ModelKind, ModelSpec

log = logging.getLogger(__name__)

AnyJob = GenerateJob | EmbedJob | RerankJob

#: Seconds a waiting request sleeps between checks that its client is still there.
_TICK_S = 1.0

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


def _retry_after(wait_s: float | None) -> int:
    """Whole seconds for Retry-After: the estimate, kept within [1, 300]; 5 before any estimate."""
    if wait_s is None:
        return 5
    return max(1, min(300, math.ceil(wait_s)))


@dataclass
class Ticket:
    """A job this process enqueued and is waiting for."""

    job: AnyJob
    inbox: queue.SimpleQueue[Event]


class Dispatcher:
    """Turns validated requests into rq jobs and their events into results."""

    def __init__(self, redis: Redis, catalog: ModelCatalog, router: ReplyRouter) -> None:
        self.redis = redis
        self.catalog = catalog
        self.router = router
        self._queues: dict[str, Queue] = {}
        self._live: dict[str, int] = {}
        self._take_back_script = redis.register_script(_TAKE_BACK_LUA)

    # -- admission -------------------------------------------------------------------------
    def resolve(self, name: str, kind: ModelKind, param: str = "model") -> ModelSpec:
        """The model ``name`` if it exists and serves ``kind``.

        Whether it has a live worker and room in its queue is checked by :meth:`submit`, in the
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

    # -- enqueue ---------------------------------------------------------------------------
    def submit(self, job: AnyJob) -> Ticket:
        """Register for the job's events, then admit and enqueue it on its model's queue.

        One transaction reads the model's live workers and queue length and pushes the job, so
        admission costs no round trip of its own and the queue never grows past ``max_queue``. A job
        that may not stay (no live worker, a full queue) is taken back out and its error raised,
        unless a worker has already taken it.
        """
        spec = self.catalog.resolve(job.model)
        assert spec is not None, "jobs are made for resolved models"
        inbox = self.router.register(job.job_id)
        budget = job.deadline - time.time()
        queue = self.queue(job.model)
        try:
            # One round trip: rq registers the queue, saves and pushes the job (it starts the
            # transaction itself), then the admission reads.
            pipe = self.redis.pipeline()
            queue.enqueue(
                keys.JOB_FUNCTION,
                payload=job.model_dump(mode="json"),
                job_id=job.job_id,
                description=f"{job.type} {job.model}",
                ttl=max(1, math.ceil(budget)),
                job_timeout=max(1, math.ceil(budget)) + 5,
                result_ttl=keys.RESULT_TTL_S,
                failure_ttl=keys.FAILURE_TTL_S,
                pipeline=pipe,
            )
            pipe.zcount(keys.model_workers_key(job.model), time.time(), "+inf")
            pipe.llen(queue.key)
            *_, alive, length = pipe.execute()
            alive, queued = int(alive), int(length) - 1  # jobs ahead of this one
            self._live[job.model] = alive
            refusal = self._refusal(spec, alive, queued)
            if refusal is not None and self._take_back(queue, job.job_id):
                self.router.unregister(job.job_id)
                raise refusal
        except RedisError as exc:
            self.router.unregister(job.job_id)
            raise ServiceUnavailable("Redis is unreachable", code="redis_unavailable", retry_after=2) from exc
        return Ticket(job=job, inbox=inbox)

    def _take_back(self, queue: Queue, job_id: str) -> bool:
        """Remove a just-enqueued job and its rq hash; False if a worker took it meanwhile."""
        return bool(self._take_back_script(keys=[queue.key, Job.key_for(job_id)], args=[job_id]))

    def queue(self, model: str) -> Queue:
        """The rq queue of ``model``."""
        if model not in self._queues:
            self._queues[model] = Queue(
                keys.queue_name(model), connection=self.redis, serializer=JSONSerializer
            )
        return self._queues[model]

    def queue_position(self, job: AnyJob) -> int | None:
        """Jobs ahead of ``job`` in its queue (0: next), or None once a worker took it."""
        try:
            return self.queue(job.model).get_job_position(job.job_id)
        except RedisError:
            return None

    # -- waiting ---------------------------------------------------------------------------
    def events(self, ticket: Ticket, client_gone: Callable[[], bool]) -> Iterator[Event | None]:
        """The job's events until a terminal one; ``None`` each idle tick (for keep-alives).

        Raises :class:`DeadlineExceeded` at the deadline (and cancels the job), and
        :class:`ServiceUnavailable` if the job's worker died after the client saw part of the
        result; before that, the job is requeued and the client notices nothing. A client that
        went away cancels the job and ends the iteration.
        """
        relayed = False
        while True:
            remaining = ticket.job.deadline - time.time()
            if remaining <= 0:
                self.cancel(ticket.job.job_id)
                raise DeadlineExceeded("the request's deadline passed before the result was ready")
            try:
                event = ticket.inbox.get(timeout=min(_TICK_S, remaining))
            except queue.Empty:
                if client_gone():
                    log.info("client of job %s went away; cancelling it", ticket.job.job_id)
                    self.cancel(ticket.job.job_id)
                    return
                yield None
                continue
            if isinstance(event, WorkerLostEvent):
                if not relayed and self._requeue(ticket.job):
                    continue
                raise ServiceUnavailable(
                    "the worker running this request died; retry it", code="worker_lost", retry_after=1
                )
            relayed = True
            yield event
            if isinstance(event, DoneEvent | ErrorEvent):
                return

    def _requeue(self, job: AnyJob) -> bool:
        """Put a job whose worker died back at the front of its queue.

        Even with no live worker left: like any queued job it waits for one (a restarted worker,
        typically) until its deadline.
        """
        try:
            if self.redis.exists(keys.cancel_key(job.job_id)):
                return False
            self.queue(job.model).failed_job_registry.requeue(job.job_id, at_front=True)
        except (RedisError, NoSuchJobError, InvalidJobOperation) as exc:
            log.warning("could not requeue job %s: %s", job.job_id, exc)
            return False
        log.info("requeued job %s after its worker died", job.job_id)
        return True

    def result(self, ticket: Ticket, client_gone: Callable[[], bool]):
        """Wait for the job's result (non-streaming); raises the job's error."""
        for event in self.events(ticket, client_gone):
            if isinstance(event, ErrorEvent):
                raise event.to_error()
            if isinstance(event, DoneEvent):
                return self.done_result(event)
        raise DeadlineExceeded("the client went away")

    def done_result(self, event: DoneEvent):
        """The result of a done job, from the event or, when it was too big, from Redis."""
        if event.result is not None:
            return event.result
        raw = self.redis.get(keys.result_key(event.job_id))
        if raw is None:
            raise InternalError("the job's result expired before it was read")
        return decode_result(json.loads(raw))

    def close(self, ticket: Ticket) -> None:
        self.router.unregister(ticket.job.job_id)

    # -- cancellation ----------------------------------------------------------------------
    def cancel(self, job_id: str) -> None:
        """Remove the job if it is queued, stop it if it runs; safe to call on a finished job."""
        try:
            self.redis.set(keys.cancel_key(job_id), 1, ex=keys.CANCEL_TTL_S)
            rq_job = Job.fetch(job_id, connection=self.redis, serializer=JSONSerializer)
            status = rq_job.get_status()
            if status == JobStatus.QUEUED:
                rq_job.cancel()
                # No worker will ever speak for this job: tell whoever waits for it (if anyone).
                reply_to = (rq_job.kwargs.get("payload") or {}).get("reply_to")
                if reply_to:
                    error = Cancelled("the request was cancelled while it was queued")
                    self.redis.publish(reply_to, encode_event(ErrorEvent.from_error(job_id, error)))
            elif status == JobStatus.STARTED:
                send_stop_job_command(self.redis, job_id, serializer=JSONSerializer)
        except (NoSuchJobError, InvalidJobOperation):
            pass
        except RedisError as exc:
            log.warning("could not cancel job %s: %s", job_id, exc)
