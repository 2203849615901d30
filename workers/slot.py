"""rq slot workers: stock rq dequeueing and bookkeeping, run as threads of one model process.

Each slot takes one job at a time with unmodified rq code and hands it to the model's engine, so
rq's registries and rq-dashboard show every running job; a process with K slots batches up to K jobs.
"""

from __future__ import annotations

import logging
import signal
import threading

from rq.exceptions import StopRequested
from rq.job import Job
from rq.queue import Queue
from rq.timeouts import TimerDeathPenalty
from rq.worker import SimpleWorker, WorkerStatus

from shared import keys
from workers import runtime

log = logging.getLogger(__name__)

#: rq worker TTL: rq blocks on the queue for ``ttl - 15`` s, so an idle slot sees a drain within 2 s.
SLOT_WORKER_TTL = 17


class SlotWorker(SimpleWorker):
    """A :class:`SimpleWorker` that lives on a thread and can be drained from the main thread."""

    # SIGALRM works on the main thread only; slots are not.
    death_penalty_class = TimerDeathPenalty

    def __init__(self, *args, draining: threading.Event, **kwargs) -> None:
        super().__init__(*args, worker_ttl=SLOT_WORKER_TTL, **kwargs)
        self._draining = draining

    def _install_signal_handlers(self) -> None:
        """The process's main thread owns signals; it drains the slots through ``draining``."""

    def heartbeat(self, timeout=None, pipeline=None):
        # rq calls this between jobs and between blocking dequeues: the place to leave when draining.
        if pipeline is None and self._draining.is_set() and self.get_state() != WorkerStatus.BUSY:
            raise StopRequested()
        super().heartbeat(timeout, pipeline)

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
        super().execute_job(job, queue)

    def kill_horse(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """rq's stop-job command lands here: set the job's cancel flag; the engine stops it."""
        job_id = self._stopped_job_id or self.get_current_job_id()
        if job_id:
            runtime.current().cancel(job_id)
