"""Publishing job events to the API processes' reply channels."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from redis import Redis
from rq import get_current_job

from shared import keys
from shared.errors import ModelyardError
from shared.events import DeltaEvent, DoneEvent, ErrorEvent, encode_event
from shared.jobs import EmbedResult, GenerateResult, RerankResult

#: Results bigger than this (JSON bytes) go to a Redis key, not through pub/sub: a subscriber whose
#: output buffer passes Redis' pubsub limit (32 MB by default) is disconnected with every stream on it.
MAX_INLINE_RESULT_BYTES = 512 * 1024


class RedisEventSink:
    """Publishes events; thread-safe (redis-py pools connections)."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    def publish(self, messages: list[tuple[str, DeltaEvent]]) -> None:
        """Publish one decode step's deltas in one round trip."""
        if not messages:
            return
        pipe = self._redis.pipeline(transaction=False)
        for channel, event in messages:
            pipe.publish(channel, encode_event(event))
        pipe.execute()

    def publish_done(
        self,
        channel: str,
        job_id: str,
        result: GenerateResult | EmbedResult | RerankResult,
        *,
        model: str,
        run_s: float,
        rate_subject: str | None = None,
    ) -> None:
        """Send the terminal success event (parking a large result in Redis first), and record the
        job's run time (throughput estimates) and tokens (rate limits), in one round trip."""
        timings = _timings()
        event = DoneEvent(job_id=job_id, result=result, **timings)
        data = encode_event(event)
        pipe = self._redis.pipeline(transaction=False)
        if len(data) > MAX_INLINE_RESULT_BYTES:
            pipe.set(keys.result_key(job_id), result.model_dump_json(), ex=keys.RESULT_TTL_S)
            data = encode_event(DoneEvent(job_id=job_id, **timings))
        pipe.publish(channel, data)
        pipe.lpush(keys.job_durations_key(model), round(run_s, 4))
        pipe.ltrim(keys.job_durations_key(model), 0, keys.DURATION_SAMPLES - 1)
        if rate_subject is not None:
            tokens = keys.rate_key(rate_subject, "tokens", time.time())
            pipe.incrby(tokens, result.usage.total_tokens)
            pipe.expire(tokens, 2 * keys.RATE_WINDOW_S)
        pipe.execute()

    def publish_error(self, channel: str, job_id: str, error: ModelyardError) -> None:
        """Send the terminal error event."""
        event = ErrorEvent.from_error(job_id, error).model_copy(update=_timings())
        self._redis.publish(channel, encode_event(event))


def _timings() -> dict[str, float]:
    """Seconds the running rq job waited in its queue and has run so far, from rq's own record.

    ``queued_s`` compares the enqueueing API host's clock with this one's; empty outside rq jobs.
    """
    job = get_current_job()
    if job is None or job.started_at is None:
        return {}
    timings = {"run_s": round((datetime.now(UTC) - job.started_at).total_seconds(), 4)}
    if job.enqueued_at is not None:
        timings["queued_s"] = round(max(0.0, (job.started_at - job.enqueued_at).total_seconds()), 4)
    return timings
