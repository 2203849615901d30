"""The one function rq runs: hand a job to its model's engine and report how it ended."""

from __future__ import annotations

import logging
import time
from typing import Any

from shared import keys
from shared.errors import Cancelled, DeadlineExceeded, InternalError, ModelyardError, NotFound
from shared.jobs import BadMessage, EmbedResult, GenerateResult, RerankResult, decode_job
from workers import runtime

log = logging.getLogger(__name__)

#: How often a waiting slot thread wakes to check the deadline, in seconds.
_POLL_S = 0.5


def run_job(payload: dict[str, Any]) -> dict[str, Any]:
    """Run one job; always publishes exactly one terminal event to the job's ``reply_to`` channel.

    Raises on failure so that rq records the job as failed (or stopped).
    """
    rt = runtime.current()
    try:
        job = decode_job(payload)
    except BadMessage:
        log.error("refusing a job with an invalid payload")
        raise
    cancel = rt.cancel_flag(job.job_id)
    started = time.monotonic()
    try:
        if rt.redis.exists(keys.cancel_key(job.job_id)):
            raise Cancelled("the client went away before the job started")
        if time.time() >= job.deadline:
            raise DeadlineExceeded("the request's deadline passed while it was queued")
        engine = rt.engines.get(job.model)
        if engine is None:
            raise NotFound(f"model {job.model!r} is not loaded by this worker", param="model")
        ticket = engine.submit(job, cancel)
        while not ticket.wait(_POLL_S):
            pass
        result = ticket.outcome()
    except ModelyardError as error:
        rt.sink.publish_error(job.reply_to, job.job_id, error)
        log.info("job %s (%s) ended: %s %s", job.job_id, job.model, error.status, error.code)
        raise
    except Exception:
        log.exception("job %s (%s) crashed", job.job_id, job.model)
        rt.sink.publish_error(job.reply_to, job.job_id, InternalError("the worker failed to run the job"))
        raise
    finally:
        rt.release(job.job_id)
    run_s = time.monotonic() - started
    rt.sink.publish_done(
        job.reply_to, job.job_id, result, model=job.model, run_s=run_s, rate_subject=job.rate_subject
    )
    log.info("job %s (%s) done in %.3fs, tokens=%d", job.job_id, job.model, run_s, result.usage.total_tokens)
    return rq_return_value(result)


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
        return result.model_dump(mode="json", exclude={"choices": {"__all__": {"logprobs"}}})
    return result.model_dump(mode="json")
