"""rq slot workers: stock rq bookkeeping, run as threads of one model process.

Each slot takes one job at a time and hands it to the model's engine, so rq's registries and
rq-dashboard show every running job; a process with K slots batches up to K jobs.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq.exceptions import StopRequested
from rq.executions import Execution, cleanup_execution
from rq.job import Job
from rq.queue import Queue
from rq.timeouts import TimerDeathPenalty
from rq.utils import now
from rq.worker import SimpleWorker, WorkerStatus

from shared import keys
from shared.priority import BANDS, Band
from shared.takings import Takings
from workers import runtime

log = logging.getLogger(__name__)

#: An idle slot refreshes its rq worker key at most this often (seconds); the key lives SLOT_WORKER_TTL + 60.
HEARTBEAT_EVERY_S = 1.0

#: rq worker TTL: a slot blocks on the queue for ``ttl - 15`` s, so an idle slot sees a drain within 2 s.
SLOT_WORKER_TTL = 17

#: Seconds between two looks at ``rq suspend``'s key (rq looks before every job: a round trip each).
SUSPENSION_CHECK_EVERY_S = 1.0

#: Longest wait between two attempts of a slot to reach Redis again: a slot takes jobs again this
#: soon after Redis is back (its worker re-registers at once, so admission counts it).
RECONNECT_MAX_S = 2.0


class GivenUp(Exception):
    """Raised by the job function for a job whose end it could not send because the job is no
    longer this run's (workers/publisher.py): the worker was out of reach long enough for the
    janitor to fail it, and the API may have requeued it."""


class TakenBack(Exception):
    """The job left this slot's takings before it started (see :meth:`SlotWorker.prepare_execution`)."""


def _bands_of(model: str, queue_names: list[str]) -> list[Band]:
    """The bands of ``model`` whose queues these are, most urgent first; each must be whole."""
    bands = [band for band in BANDS if any(keys.queue_place(model, n) == (band, 0) for n in queue_names)]
    if sorted(queue_names) != sorted(keys.model_queue_names(model, tuple(bands))):
        raise ValueError(f"a slot listens to whole bands of one model, not {queue_names}")
    return bands


class SlotJob(Job):
    """rq's job, whose start also writes its ``meta`` (where the slot recorded its worker process,
    :data:`shared.keys.JOB_WORKER`) in the one HSET that marks it started: no job is ever started
    without the record of who runs it, and it costs no round trip."""

    def prepare_for_execution(self, worker_name: str, pipeline: Pipeline) -> None:
        super().prepare_for_execution(worker_name, pipeline)
        pipeline.hset(self.key, "meta", self.serializer.dumps(self.meta))


class SlotWorker(SimpleWorker):
    """A :class:`SimpleWorker` that lives on a thread and can be drained from the main thread.

    ``worker_id`` is the worker process's (its heartbeat key's) id, recorded in every job it starts.
    """

    # SIGALRM works on the main thread only; slots are not.
    death_penalty_class = TimerDeathPenalty
    job_class = SlotJob

    def __init__(
        self,
        *args,
        model: str,
        worker_id: str,
        taker: str,
        draining: threading.Event,
        fetching: threading.Lock,
        **kwargs,
    ) -> None:
        super().__init__(*args, worker_ttl=SLOT_WORKER_TTL, **kwargs)
        self.model = model
        self.worker_id = worker_id
        #: The slot's name for its takings: the same for each rq worker the slot is made anew as.
        self.taker = taker
        self._draining = draining
        self._fetching = fetching
        self._next_suspension_check = 0.0
        self._takings = Takings(self.connection)
        self._bands = _bands_of(model, [queue.name for queue in self.queues])
        #: Whether takings of an earlier take (or an earlier run of this slot) may be left over.
        self._unsure = True

    def _install_signal_handlers(self) -> None:
        """The process's main thread owns signals; it drains the slots through ``draining``."""

    def subscribe(self) -> None:
        """rq's subscription to its command channel (stop-job), read by a thread that wakes every
        ``HEARTBEAT_EVERY_S``: rq's own waits 60 s per read, and redis-py joins that thread when the
        slot ends, so a read begun just after the unsubscribe held a draining worker for a minute."""
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=HEARTBEAT_EVERY_S, daemon=True, exception_handler=self._pubsub_exception_handler
        )

    def _set_ip_address(self, connection: Redis) -> None:
        """rq names the connection while it constructs the worker: a slot made again while Redis is
        down (after an outage stopped the last one) must not die of it, but start when Redis is back."""
        try:
            super()._set_ip_address(connection)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.warning("slot %s starts without Redis (%s)", self.name, exc)
            self.ip_address = "unknown"

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        """Take the next job (shared/takings.py), waiting on the bands' doorbells ``timeout`` s at
        a time, until one comes or the worker drains.

        rq's own loop retries forever and cannot be left between a dequeue and the job's start
        without losing the job; this one checks ``draining`` only before each take.

        Only one slot of a model in a process waits at a time (``fetching``). Redis hands a ring
        to the client that has blocked longest, and a slot that just took a job waits again behind
        the other processes' waiting slot, so jobs go round the model's workers instead of piling
        up on one busy process while another one idles.
        """
        backoff = 1.0
        if self.get_state() != WorkerStatus.IDLE:
            self.set_state(WorkerStatus.IDLE)
        while not self._draining.is_set():
            try:
                self.heartbeat()  # an idle slot's beat, between its blocking waits
                if self.should_run_maintenance_tasks:
                    self.run_maintenance_tasks()
                if not self._fetching.acquire(timeout=HEARTBEAT_EVERY_S):
                    continue
                try:
                    if self._unsure:  # a take's answer may have been lost: its job went nowhere
                        if returned := self._takings.give_back(self.taker):
                            log.warning("slot %s put %d taken jobs back in their queues", self.name, returned)
                        self._unsure = False
                    taken = self._take()
                    if taken is None:
                        self.connection.blpop(self._doorbells(), timeout or 1)
                        continue
                finally:
                    self._fetching.release()
            except (RedisConnectionError, RedisTimeoutError) as exc:
                self._unsure = True
                if backoff == 1.0:
                    log.warning("slot %s cannot reach Redis (%s); retrying", self.name, exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, RECONNECT_MAX_S)
                continue
            backoff = 1.0
            job, queue = taken
            self.reorder_queues(reference_queue=queue)  # rq's own loop calls it here too
            job.redis_server_version = self.get_redis_server_version()
            return job, queue  # starting the job beats for it (with the job's timeout)
        raise StopRequested()

    def _doorbells(self) -> list[str]:
        return [keys.doorbell_key(self.model, band) for band in self._bands]

    def _take(self) -> tuple[Job, Queue] | None:
        """Take over the queues in their present order, the job's hash read in the same call; None
        when they are empty. A job rq cannot read is dropped (given back, it would come again)."""
        while True:
            ordered = self._ordered_queues
            taken = self._takings.take(
                self.taker, self.worker_id, self._doorbells(), [queue.key for queue in ordered]
            )
            if taken is None:
                return None
            queue_key, job_id, fields = taken
            queue = next(q for q in ordered if q.key == queue_key)
            job = self.job_class(job_id, connection=self.connection, serializer=self.serializer)
            try:
                job.restore(fields)
                _ = job.func_name  # rq reads the payload lazily: read it here, where a failure is caught
                job.meta[keys.JOB_RUN_FIELD] = int(fields.get(keys.JOB_RUN_FIELD.encode(), 0))
            except Exception:
                log.exception("slot %s: dropped job %s, whose record rq cannot read", self.name, job_id)
                self.connection.hdel(keys.slot_takings_key(self.taker), job_id)
                continue
            return job, queue

    def prepare_execution(self, job: Job) -> Execution:
        """rq's registration of the job's execution (the started registry), in the transaction that
        also removes it from this slot's takings, and undone unless it was still there: the janitor
        puts the takings of a slot whose worker stopped beating back in their queues, and a slot
        cut off for that long must not start a job that another one may take now. (Undoing costs
        a round trip in that rare case; checking first, under ``WATCH``, would cost two every time.)"""
        with self.connection.pipeline() as pipe:
            pipe.hdel(keys.slot_takings_key(self.taker), job.id)
            execution = Execution.create(
                job, self.get_heartbeat_ttl(job), pipeline=pipe, worker_name=self.name
            )
            self.set_state(WorkerStatus.BUSY, pipeline=pipe)
            still_taken = pipe.execute()[0]
        if not still_taken:
            with self.connection.pipeline() as pipe:
                execution.delete(job=job, pipeline=pipe)  # this execution's own entries only
                pipe.srem(execution.worker_executions_key, execution.composite_key)
                self.set_state(WorkerStatus.IDLE, pipeline=pipe)
                pipe.execute()
            raise TakenBack(job.id)
        self.executions[execution.id] = execution
        return execution

    def check_for_suspension(self, burst: bool) -> None:
        """rq's check, at most once every ``SUSPENSION_CHECK_EVERY_S``."""
        if time.monotonic() < self._next_suspension_check:
            return
        self._next_suspension_check = time.monotonic() + SUSPENSION_CHECK_EVERY_S
        super().check_for_suspension(burst)

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        """rq's heartbeat, its three commands in one round trip, skipped while the last beat is fresh.

        rq beats after every job, though starting a job beat (on its own pipeline) moments before.
        """
        if pipeline is not None:
            super().heartbeat(timeout, pipeline)
            return
        if self._heartbeat_age() < HEARTBEAT_EVERY_S:
            return
        with self.connection.pipeline(transaction=False) as pipe:
            super().heartbeat(timeout, pipe)
            pipe.execute()

    def _heartbeat_age(self) -> float:
        if self.last_heartbeat is None:
            return math.inf
        return (now() - self.last_heartbeat).total_seconds()

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            self._execute_job(job, queue)
        except TakenBack:
            log.warning(
                "slot %s: job %s was given back while Redis was out of reach; not starting it",
                self.name,
                job.id,
            )
            self.set_state(WorkerStatus.IDLE)

    def leave(self) -> None:
        """The slot stops for good: put back anything it took and drop it from the takers."""
        try:
            self._takings.give_back(self.taker, forget=True)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.warning("slot %s could not leave the takers (%s); the janitor will", self.name, exc)

    def _execute_job(self, job: Job, queue: Queue) -> None:
        if job.func_name != keys.JOB_FUNCTION:
            # Anyone who can write to Redis can enqueue; only the model call may run here.
            log.error("refusing job %s: function %r is not %s", job.id, job.func_name, keys.JOB_FUNCTION)
            execution = self.prepare_execution(job)
            self.handle_job_failure(
                job, queue, exc_string="refused: not a modelyard job", execution=execution
            )
            self.set_state(WorkerStatus.IDLE)
            return
        job.meta[keys.JOB_WORKER] = self.worker_id  # written as the job starts (SlotJob)
        super().execute_job(job, queue)

    def _finalize_failure(self, job: Job, queue: Queue, execution: Execution, exc_info) -> None:
        """rq's record of a failed job, except for a job given up (:class:`GivenUp`): rq's record
        is the janitor's and the new run's now; only this execution's own entries go."""
        if exc_info[0] is None or not issubclass(exc_info[0], GivenUp):
            super()._finalize_failure(job, queue, execution, exc_info)
            return
        log.warning("slot %s: job %s was given up while this worker was out of reach", self.name, job.id)
        try:
            with self.connection.pipeline() as pipe:
                cleanup_execution(self, job, pipe, execution)
                pipe.execute()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.warning("slot %s could not clean up job %s (%s); it expires", self.name, job.id, exc)

    def kill_horse(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """rq's stop-job command lands here: set the job's cancel flag; the engine stops it."""
        job_id = self._stopped_job_id or self.get_current_job_id()
        if job_id:
            runtime.current().cancel(job_id)
