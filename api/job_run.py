"""Waiting for one submitted job: its events, its result, and cancelling it when nobody waits."""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from api.middleware import Outcome, RequestContext
from shared.errors import Cancelled, DeadlineExceeded, ModelyardError, ServiceUnavailable
from shared.events import DeltaEvent, DoneEvent, ErrorEvent, WorkerLostEvent
from shared.jobs import AnyResult

if TYPE_CHECKING:
    from api.dispatch import Dispatcher, Submission

log = logging.getLogger(__name__)

#: Seconds a waiting request sleeps between checks that its client is still there.
TICK_S = 1.0


class JobRun:
    """A job submitted for a request (``Dispatcher.run``), used as a context manager.

    Leaving the ``with`` block forgets the job's inbox, and cancels the job if it had not ended
    (the client stopped reading a stream, or the code around it raised).
    """

    def __init__(self, dispatcher: Dispatcher, submission: Submission, context: RequestContext) -> None:
        self._dispatcher = dispatcher
        self._inbox = submission.inbox
        #: The job as it was enqueued (``reply_to`` is this process's reply channel).
        self.job = submission.job
        self.context = context
        #: The job's result once it is done.
        self.result: AnyResult | None = None
        #: No worker will run the job any more (it ended, or was cancelled).
        self._ended = False
        self._reported = False
        #: The job's present run: only its events count (``keys.JOB_RUN_FIELD``).
        self._run = 0

    def __enter__(self) -> JobRun:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def wait(self) -> AnyResult:
        """The job's result (a request that does not stream); raises how the request ended."""
        for _ in self.events():
            pass
        assert self.result is not None
        return self.result

    def events(self) -> Iterator[DeltaEvent | None]:
        """The job's deltas, and ``None`` each idle tick (for keep-alives), until it is done.

        When it is done, :attr:`result` holds its result and the iteration ends. Every other
        ending raises: the job's own error; :class:`DeadlineExceeded` at the deadline and
        :class:`Cancelled` when the client went away (both cancel the job); 503 ``worker_lost`` if
        the job's worker died after the client saw part of the result (before that, the job is
        requeued and the client notices nothing).
        """
        try:
            yield from self._relay()
        except ModelyardError as error:
            self._report(error)
            raise

    def _relay(self) -> Iterator[DeltaEvent | None]:
        job, chain = self.job, self._dispatcher.middleware
        relayed = False
        while True:
            remaining = job.deadline - time.time()
            if remaining <= 0:
                self._stop()
                raise DeadlineExceeded("the request's deadline passed before the result was ready")
            try:
                event = self._inbox.get(timeout=min(TICK_S, remaining))
            except queue.Empty:
                if self.context.client_gone():
                    log.info("client of job %s went away; cancelling it", job.job_id)
                    self._stop()
                    raise Cancelled("the client went away") from None
                yield None
                continue
            if event.run is not None and event.run != self._run:
                # A worker cut off from Redis for longer than its heartbeat TTL, back after the job
                # was requeued away from it: it no longer speaks for the job.
                log.info(
                    "job %s: dropped an event of its run %d (run %d is current)",
                    job.job_id,
                    event.run,
                    self._run,
                )
                continue
            if isinstance(event, WorkerLostEvent):
                run = None if relayed else self._dispatcher.requeue(job)
                if run is not None:
                    self._run = run
                    continue
                self._ended = True
                raise ServiceUnavailable(
                    "the worker running this request died; retry it", code="worker_lost", retry_after=1
                )
            relayed = True
            if isinstance(event, DoneEvent | ErrorEvent):
                self._ended = True
            chain.on_event(job, self.context, event)
            if isinstance(event, ErrorEvent):
                raise event.to_error()
            if isinstance(event, DoneEvent):
                self.result = self._dispatcher.done_result(event)
                self._report(self.result)
                return
            yield event

    def queue_position(self) -> int | None:
        """Jobs ahead of this one in its queue (0: next), or None once a worker took it."""
        return self._dispatcher.queue_position(self.job)

    def close(self) -> None:
        """Forget the job; cancel it first if it may still run (safe to call more than once)."""
        self._report(Cancelled("the request stopped waiting for its job"))
        self._dispatcher.router.unregister(self.job.job_id)

    def _stop(self) -> None:
        self._ended = True
        self._dispatcher.cancel(self.job.job_id)

    def _report(self, outcome: Outcome) -> None:
        """End the run with ``outcome`` (once): cancel a job an error left running, tell the chain."""
        if self._reported:
            return
        self._reported = True
        if not self._ended:
            self._stop()
        self._dispatcher.middleware.after_result(self.job, self.context, outcome)
