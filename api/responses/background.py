"""Background responses: a job that replies to a Redis Stream, run whatever HTTP connection stays.

:func:`submit` enqueues the job with ``reply_to`` set to the response's event stream (the worker
appends its events there and runs it with no subscriber) and lists it among the active responses.
:class:`Keeper` (one API process at a time, every second) ends what no worker will: the response of
a dead worker (requeued if it had sent nothing, else failed), and one past its deadline.
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import suppress
from typing import Any

from redis import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from api.dispatch import Dispatcher
from api.fleet import live_worker_counts, wait_estimate
from api.middleware import RequestContext
from api.responses import frames
from api.responses.store import Record, ResponseStore
from shared import keys
from shared.errors import Cancelled, DeadlineExceeded, ModelyardError, ServiceUnavailable
from shared.jobs import GenerateJob

log = logging.getLogger(__name__)


def submit(dispatcher: Dispatcher, job: GenerateJob, record: Record, context: RequestContext) -> None:
    """Enqueue a background response's job in its band, replying to its event stream (deltas only
    when the client asked for a stream: a job that sent nothing is requeued when its worker dies),
    and list it among the active responses in the same transaction. Refusals raise as chat's do (no
    live worker: 503, a full queue: 429, :meth:`Dispatcher.enqueue`), and nothing stays then."""
    job = job.model_copy(update={"reply_to": keys.response_events_key(record.id)})
    dispatcher.middleware.before_submit(job, context)
    active = keys.background_responses_key()
    try:
        dispatcher.enqueue(
            job, f"response {job.model}", also=lambda pipe: pipe.zadd(active, {record.id: job.deadline})
        )
    except ModelyardError:
        with suppress(RedisError):  # else the keeper drops it: its record is deleted by the caller
            dispatcher.redis.zrem(active, record.id)
        raise
    dispatcher.middleware.after_submit(job, context)


def cancel(dispatcher: Dispatcher, store: ResponseStore, record: Record) -> Record:
    """Stop a background response wherever it is: its end is a cancelled frame (first end wins)."""
    if record.final:
        return record
    dispatcher.cancel(record.job_id)
    frames.append_error(dispatcher.redis, record, Cancelled("the response was cancelled"))
    return frames.finalize(dispatcher, store, record)


def rq_status(dispatcher: Dispatcher, job_id: str) -> JobStatus | None:
    try:
        return Job.fetch(job_id, connection=dispatcher.redis, serializer=JSONSerializer).get_status()
    except NoSuchJobError:
        return None


def view(dispatcher: Dispatcher, store: ResponseStore, record: Record) -> dict[str, Any]:
    """A background response as it is now: final, ``in_progress`` once its job started or sent a
    frame, else ``queued`` with its queue position and an estimated wait (as ``/v1/jobs`` has)."""
    record = settle(dispatcher, store, record)
    response = dict(record.response)
    if record.final:
        return response
    status = rq_status(dispatcher, record.job_id)
    if frames.produced(dispatcher.redis, record.id) or status == JobStatus.STARTED:
        response["status"] = "in_progress"
        return response
    spec = dispatcher.catalog.resolve(record.model)
    position = dispatcher.queue_position(_job_of(record))  # counting the bands above its own
    if spec is not None and position is not None:
        workers = live_worker_counts(dispatcher.redis, [spec])[spec.name]
        response["queue_position"] = position
        response["eta_seconds"] = wait_estimate(dispatcher.redis, spec, position + 1, workers)
    return response


def settle(dispatcher: Dispatcher, store: ResponseStore, record: Record) -> Record:
    """End what has ended: frames that ended, a deadline passed, a worker that died."""
    record = frames.finalize(dispatcher, store, record)
    if record.final:
        return record
    if record.overdue:
        return _deadline_passed(dispatcher, store, record)
    if rq_status(dispatcher, record.job_id) in (JobStatus.FAILED, None):
        # rq failed it with no end frame (the janitor found its worker dead), or it is gone: rq's
        # ttl drops a job still queued at its deadline, before ``overdue`` (which waits a grace).
        # An end the worker wrote meanwhile stays the end: the first terminal frame wins.
        if time.time() > record.deadline:
            return _deadline_passed(dispatcher, store, record)
        if (
            not frames.produced(dispatcher.redis, record.id)
            and dispatcher.requeue(_job_of(record)) is not None
        ):
            return record
        if frames.has_terminal(dispatcher.redis, record.id):  # the end came meanwhile
            return frames.finalize(dispatcher, store, record)
        error = ServiceUnavailable(
            "the worker running this response died after it had started to answer; create it again",
            code="worker_lost",
        )
        frames.append_error(dispatcher.redis, record, error)
        return frames.finalize(dispatcher, store, record)
    return record


def _deadline_passed(dispatcher: Dispatcher, store: ResponseStore, record: Record) -> Record:
    """End a response whose deadline passed: ``deadline_exceeded``, its job stopped if any."""
    dispatcher.cancel(record.job_id)
    error = DeadlineExceeded("the response's deadline passed before it was done")
    frames.append_error(dispatcher.redis, record, error)
    return frames.finalize(dispatcher, store, record)


def _job_of(record: Record) -> GenerateJob:
    """Enough of the job for ``Dispatcher.requeue`` (its id and model)."""
    return GenerateJob(job_id=record.job_id, model=record.model, reply_to="", deadline=record.deadline)


class Keeper:
    """A daemon thread: every ``interval``, one API process (a short lock) settles every active
    background response, so none waits for a reader to notice its end, death or deadline."""

    def __init__(
        self, dispatcher: Dispatcher, store: ResponseStore, owner: str, interval: float = 1.0
    ) -> None:
        self._dispatcher = dispatcher
        self._store = store
        self._owner = owner
        self._interval = interval
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="responses-keeper", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        redis = self._dispatcher.redis
        while True:
            time.sleep(self._interval)
            try:
                lock = keys.responses_keeper_lock_key()
                if redis.set(lock, self._owner, nx=True, px=int(self._interval * 900)):
                    self.sweep()
            except RedisError as exc:
                log.info("responses keeper: Redis unavailable (%s)", exc)
            except Exception:
                log.exception("responses keeper sweep failed")

    def sweep(self) -> None:
        redis = self._dispatcher.redis
        for raw in redis.zrange(keys.background_responses_key(), 0, -1):
            response = raw.decode() if isinstance(raw, bytes) else raw
            record = self._store.load(response)
            if record is None or record.final:
                redis.zrem(keys.background_responses_key(), response)
                continue
            settle(self._dispatcher, self._store, record)
