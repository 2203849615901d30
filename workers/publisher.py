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
    """Publishes events; thread-safe (redis-py pools connections).

    A worker cut off from Redis for longer than its heartbeat TTL may come back to find its jobs
    given up (the janitor failed them; the API requeued them, a new run each). It no longer speaks
    for them: the API drops a stale run's deltas from pub/sub, and every send that only the job's
    own run may make (a job's end, a background response's frames) is made by a script that checks
    the job's record first. Those calls return False for a job given up.
    """

    def __init__(self, redis: Redis, *, retention_s: int = 60) -> None:
        self._redis = redis
        self._send_script = redis.register_script(_SEND_LUA)
        #: Seconds a large result parked for the API is kept: ``Settings.job_retention_s``.
        self._retention_s = retention_s

    def publish(self, messages: list[tuple[str, DeltaEvent]]) -> None:
        """Publish one decode step's deltas in one round trip."""
        if not messages:
            return
        pipe = self._redis.pipeline(transaction=False)
        for channel, event in messages:
            data = encode_event(event)
            if keys.is_events_stream(channel):
                self._send(pipe, channel, event.job_id, event.run, data)
            else:
                pipe.publish(channel, data)
        pipe.execute()

    def publish_done(
        self,
        channel: str,
        job_id: str,
        result: GenerateResult | EmbedResult | RerankResult,
        *,
        model: str,
        run_s: float,
        run: int,
    ) -> bool:
        """Send the terminal success event (parking a large result in Redis first), and record the
        job's run time (the model's throughput, for the API's Retry-After and ETAs), in one round
        trip; False if the job was given up. Rate limits are the API's: it charges the result's
        tokens when it reads them."""
        timings = _timings()
        event = DoneEvent(job_id=job_id, run=run, result=result, **timings)
        data = encode_event(event)
        pipe = self._redis.pipeline(transaction=False)
        if len(data) > MAX_INLINE_RESULT_BYTES:
            pipe.set(keys.result_key(job_id), result.model_dump_json(), ex=self._retention_s)
            data = encode_event(DoneEvent(job_id=job_id, run=run, **timings))
        self._send(pipe, channel, job_id, run, data)
        pipe.lpush(keys.job_durations_key(model), round(run_s, 4))
        pipe.ltrim(keys.job_durations_key(model), 0, keys.DURATION_SAMPLES - 1)
        return bool(pipe.execute()[-3])

    def publish_error(self, channel: str, job_id: str, error: ModelyardError, *, run: int) -> bool:
        """Send the terminal error event; False if the job was given up."""
        event = ErrorEvent.from_error(job_id, error, run).model_copy(update=_timings())
        pipe = self._redis.pipeline(transaction=False)
        self._send(pipe, channel, job_id, run, encode_event(event))
        return bool(pipe.execute()[-1])

    def _send(self, pipe: Pipeline, reply_to: str, job_id: str, run: int | None, data: str) -> None:
        """PUBLISH to an API process's channel, or append to a background response's event stream,
        if the job is still started as this run (or has no record to tell: Redis lost it)."""
        stream = keys.is_events_stream(reply_to)
        self._send_script(
            keys=[keys.RQ_JOB_PREFIX + job_id, reply_to],
            args=[
                run or 0,
                keys.JOB_RUN_FIELD,
                data,
                1 if stream else 0,
                keys.RESPONSE_EVENTS_MAXLEN,
                keys.RESPONSE_EVENTS_TTL_S,
            ],
            client=pipe,
        )


# KEYS: the job's rq hash, its reply channel or event stream. ARGV: the run, the run field, the
# event, 1 for a stream, the stream's MAXLEN (~) and TTL. Returns 0, sending nothing, when the
# job's record names another run or the job is no longer started (the janitor failed it).
_SEND_LUA = """
local fields = redis.call('HMGET', KEYS[1], 'status', ARGV[2])
if fields[1] and (fields[1] ~= 'started' or tonumber(fields[2] or '0') ~= tonumber(ARGV[1])) then
  return 0
end
if ARGV[4] == '1' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'event', ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[6])
else
  redis.call('PUBLISH', KEYS[2], ARGV[3])
end
return 1
"""


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
