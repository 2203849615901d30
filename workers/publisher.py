"""Publishing job events to the API processes' reply channels.

A background response's job replies to a Redis Stream instead (``keys.is_events_stream``): its
events are appended there, bounded and expiring, for any API process to read at any time.
"""

from __future__ import annotations

from datetime import UTC, datetime

from redis import Redis
from redis.client import Pipeline
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

    def __init__(self, redis: Redis, *, retention_s: int = 60) -> None:
        self._redis = redis
        #: Seconds a large result parked for the API is kept: ``Settings.job_retention_s``.
        self._retention_s = retention_s

    def publish(self, messages: list[tuple[str, DeltaEvent]]) -> None:
        """Publish one decode step's deltas in one round trip."""
        if not messages:
            return
        pipe = self._redis.pipeline(transaction=False)
        for channel, event in messages:
            _send(pipe, channel, encode_event(event))
        pipe.execute()

    def publish_done(
        self,
        channel: str,
        job_id: str,
        result: GenerateResult | EmbedResult | RerankResult,
        *,
        model: str,
        run_s: float,
    ) -> None:
        """Send the terminal success event (parking a large result in Redis first), and record the
        job's run time (the model's throughput, for the API's Retry-After and ETAs), in one round
        trip. Rate limits are the API's: it charges the result's tokens when it reads them."""
        timings = _timings()
        event = DoneEvent(job_id=job_id, result=result, **timings)
        data = encode_event(event)
        pipe = self._redis.pipeline(transaction=False)
        if len(data) > MAX_INLINE_RESULT_BYTES:
            pipe.set(keys.result_key(job_id), result.model_dump_json(), ex=self._retention_s)
            data = encode_event(DoneEvent(job_id=job_id, **timings))
        _send(pipe, channel, data)
        pipe.lpush(keys.job_durations_key(model), round(run_s, 4))
        pipe.ltrim(keys.job_durations_key(model), 0, keys.DURATION_SAMPLES - 1)
        pipe.execute()

    def publish_error(self, channel: str, job_id: str, error: ModelyardError) -> None:
        """Send the terminal error event."""
        event = ErrorEvent.from_error(job_id, error).model_copy(update=_timings())
        pipe = self._redis.pipeline(transaction=False)
        _send(pipe, channel, encode_event(event))
        pipe.execute()


def _send(pipe: Pipeline, reply_to: str, data: str) -> None:
    """PUBLISH to an API process's channel, or append to a background response's event stream."""
    if keys.is_events_stream(reply_to):
        pipe.xadd(reply_to, {"event": data}, maxlen=keys.RESPONSE_EVENTS_MAXLEN, approximate=True)
        pipe.expire(reply_to, keys.RESPONSE_EVENTS_TTL_S)
    else:
        pipe.publish(reply_to, data)


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
