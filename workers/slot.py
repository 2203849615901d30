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
from rq.exceptions import DequeueTimeout, StopRequested
from rq.job import Job
from rq.queue import Queue
from rq.timeouts import TimerDeathPenalty
from rq.utils import now
from rq.worker import SimpleWorker, WorkerStatus

from shared import keys
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
        self, *args, worker_id: str, draining: threading.Event, fetching: threading.Lock, **kwargs
    ) -> None:
        super().__init__(*args, worker_ttl=SLOT_WORKER_TTL, **kwargs)
        self.worker_id = worker_id
        self._draining = draining
        self._fetching = fetching
        self._next_suspension_check = 0.0

    def _install_signal_handlers(self) -> None:
        """The process's main thread owns signals; it drains the slots through ``draining``."""

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
        """rq's blocking dequeue, one ``timeout`` at a time, that stops when the worker drains.

        rq's own loop retries forever and cannot be left between a dequeue and the job's start
        without losing the job; this one checks ``draining`` only before each dequeue.

        Only one slot of a model in a process waits on its queue at a time (``fetching``). Redis
        hands a job to the client that has blocked longest, and a slot that just took one blocks
        again behind the other processes' waiting slot, so jobs go round the model's workers
        instead of piling up on one busy process while another one idles.
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
                    result = self.queue_class.dequeue_any(
                        self._ordered_queues,
                        timeout,
                        connection=self.connection,
                        job_class=self.job_class,
                        serializer=self.serializer,
                        death_penalty_class=self.death_penalty_class,
                    )
                finally:
                    self._fetching.release()
            except DequeueTimeout:
                backoff = 1.0  # Redis answered
                continue
            except (RedisConnectionError, RedisTimeoutError) as exc:
                if backoff == 1.0:
                    log.warning("slot %s cannot reach Redis (%s); retrying", self.name, exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, RECONNECT_MAX_S)
                continue
            if result is not None:
                job, queue = result
                self.reorder_queues(reference_queue=queue)  # rq's own loop calls it here too
                job.redis_server_version = self.get_redis_server_version()
                return job, queue  # starting the job beats for it (with the job's timeout)
        raise StopRequested()

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

    def kill_horse(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """rq's stop-job command lands here: set the job's cancel flag; the engine stops it."""
        job_id = self._stopped_job_id or self.get_current_job_id()
        if job_id:
            runtime.current().cancel(job_id)
