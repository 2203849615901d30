"""The one function rq runs: hand a job to its model's engine and report how it ended."""

from __future__ import annotations

import logging
import time
from typing import Any

from redis import Redis, RedisError
from rq import get_current_job

from shared import keys
from shared.errors import (
    Cancelled,
    DeadlineExceeded,
    InternalError,
    InvalidRequest,
    ModelyardError,
    NotFound,
)
from shared.jobs import (
    AnyJob,
    BadMessage,
    EmbedResult,
    GenerateResult,
    RerankResult,
    decode_job,
    reply_address,
)
from workers import runtime
from workers.slot import GivenUp

log = logging.getLogger(__name__)


#: How often a waiting slot thread wakes to check the deadline, in seconds.
_POLL_S = 0.5

#: Seconds between two checks that a running job's reply channel still has its subscriber.
_AWAITED_EVERY_S = 2.0


def run_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Run one job; always publishes exactly one terminal event to the job's ``reply_to`` channel,
    unless the job was given up while this worker was out of reach (then it raises :class:`GivenUp`).

    A job nobody waits for any more is not run (see :func:`_why_skip`), and a running one is
    stopped once its reply channel loses its subscriber. Raises on failure (and on a skip) so that
    rq records the job as failed (or stopped). The runtime's :class:`~workers.runtime.JobHooks` are
    called as the job starts, is submitted and ends.
    """
    rt = runtime.current()
    try:
        job = decode_job(payload)
    except BadMessage as refused:
        log.error("refusing a job with an invalid payload: %s", refused)
        # Its client (a producer other than the API, or an older one) gets the reason, not a wait.
        address = reply_address(payload)
        if address is not None:
            rt.sink.publish_error(address.reply_to, address.job_id, InvalidRequest(str(refused)), run=_run())
        raise
    job = job.model_copy(update={"run": _run()})
    rt.hooks.job_started(job)
    # Made before the checks: a stop-job command arriving after them finds the flag to set.
    cancel = rt.cancel_flag(job.job_id)
    started = time.monotonic()
    try:
        skip = _why_skip(rt.redis, job)
        if skip is not None:
            reason, error = skip
            _count_skip(rt.redis, job, reason)
            log.info("job %s (%s) skipped, %s: %s", job.job_id, job.model, reason, error)
            raise error
        engine = rt.engines.get(job.model)
        if engine is None:
            raise NotFound(f"model {job.model!r} is not loaded by this worker", param="model")
        ticket = engine.submit(job, cancel)
        rt.hooks.job_submitted(job)
        next_check = time.monotonic() + _AWAITED_EVERY_S
        while not ticket.wait(_POLL_S):
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + _AWAITED_EVERY_S
                if not cancel.is_set() and _unawaited(rt.redis, job):
                    log.info("job %s (%s): nobody waits for it any more; stopping it", job.job_id, job.model)
                    cancel.set()
        result = ticket.outcome()
    except ModelyardError as error:
        sent = rt.sink.publish_error(job.reply_to, job.job_id, error, run=job.run)
        rt.hooks.job_ended(job, error)
        log.info("job %s (%s) ended: %s %s", job.job_id, job.model, error.status, error.code)
        if not sent:
            raise GivenUp(job.job_id) from error
        raise
    except Exception as crash:
        log.exception("job %s (%s) crashed", job.job_id, job.model)
        sent = rt.sink.publish_error(
            job.reply_to, job.job_id, InternalError("the worker failed to run the job"), run=job.run
        )
        rt.hooks.job_ended(job, crash)
        if not sent:
            raise GivenUp(job.job_id) from crash
        raise
    finally:
        rt.release(job.job_id)
    run_s = time.monotonic() - started
    sent = rt.sink.publish_done(job.reply_to, job.job_id, result, model=job.model, run_s=run_s, run=job.run)
    rt.hooks.job_ended(job, None)
    if not sent:
        raise GivenUp(job.job_id)
    log.info("job %s (%s) done in %.3fs, tokens=%d", job.job_id, job.model, run_s, result.usage.total_tokens)
    return rq_return_value(result)


def _run() -> int:
    """The run of the job rq is running on this thread (the slot read it with the job)."""
    current = get_current_job()
    return int(current.meta.get(keys.JOB_RUN_FIELD, 0)) if current is not None else 0


def _why_skip(redis: Redis, job: AnyJob) -> tuple[str, ModelyardError] | None:
    """Why a job just taken off the queue must not run (a reason and the error), or None.

    Nobody waits for it if its client left (the API set its cancel marker), its deadline passed,
    or its reply channel has no subscriber: the API process that enqueued it lost that
    subscription (a Redis restart, the process died) and failed its requests. Subscriptions are
    never persisted, so a job reloaded from a snapshot is refused even before any API process is
    back. The marker and the subscribers are read in one round trip, the one the marker alone took.
    """
    if time.time() >= job.deadline:
        return "expired", DeadlineExceeded("the request's deadline passed while it was queued")
    pipe = redis.pipeline(transaction=False)
    pipe.exists(keys.cancel_key(job.job_id))
    pipe.pubsub_numsub(job.reply_to)
    cancelled, numsub = pipe.execute()
    if cancelled:
        return "cancelled", Cancelled("the client went away before the job started")
    # A background response's job replies to a stream: no subscriber, and awaited all the same.
    if not keys.is_events_stream(job.reply_to) and (not numsub or not numsub[0][1]):
        return "unawaited", Cancelled(
            "nobody waits for the result: the request was answered before it started"
        )
    return None


def _unawaited(redis: Redis, job: AnyJob) -> bool:
    """Whether nobody waits for a running job any more: its reply channel lost its subscriber (a
    background response's stream is always awaited: it is cancelled explicitly), or the job was
    given up while this worker was out of reach (its record names another run, or rq failed it).
    False when Redis cannot say now."""
    try:
        pipe = redis.pipeline(transaction=False)
        pipe.hmget(keys.RQ_JOB_PREFIX + job.job_id, "status", keys.JOB_RUN_FIELD)
        if not keys.is_events_stream(job.reply_to):
            pipe.pubsub_numsub(job.reply_to)
        (status, run), *numsub = pipe.execute()
    except RedisError:
        return False
    if status is not None and (status != b"started" or int(run or 0) != job.run):
        return True
    return bool(numsub) and not numsub[0][0][1]


def _count_skip(redis: Redis, job: AnyJob, reason: str) -> None:
    try:
        redis.hincrby(keys.skipped_jobs_key(), f"{job.model}:{reason}", 1)
    except RedisError as exc:
        log.warning("could not count skipped job %s: %s", job.job_id, exc)


def rq_return_value(result: GenerateResult | EmbedResult | RerankResult) -> dict[str, Any]:
    """What rq keeps of a job's result (rq-dashboard shows it): a summary, never the vectors.

    The client's answer travels over pub/sub; rq's copy is for people looking at the queue. A full
    copy would cost a second JSON encoding in the worker (rq's encoder: ~7 ms for 32 MiniLM vectors)
    and keep ~250 KB per embedding job in Redis for the result's TTL.
    """
    if isinstance(result, EmbedResult):
        dimensions = len(result.embeddings[0]) if result.embeddings else 0
        return {
            "type": result.type,
            "embeddings": len(result.embeddings),
            "dimensions": dimensions,
            "usage": result.usage.model_dump(mode="json"),
        }
    if isinstance(result, GenerateResult):  # the texts, without their per-token logprobs
        return result.model_dump(
            mode="json", exclude={"choices": {"__all__": {"logprobs"}}}, exclude_none=True
        )
    return result.model_dump(mode="json")
