"""Publishing job events to the API processes' reply channels."""

from __future__ import annotations

from redis import Redis

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
        self, channel: str, job_id: str, result: GenerateResult | EmbedResult | RerankResult
    ) -> None:
        """Send the terminal success event, parking a large result in Redis first."""
        event = DoneEvent(job_id=job_id, result=result)
        data = encode_event(event)
        if len(data) > MAX_INLINE_RESULT_BYTES:
            pipe = self._redis.pipeline(transaction=True)
            pipe.set(keys.result_key(job_id), result.model_dump_json(), ex=keys.RESULT_TTL_S)
            pipe.publish(channel, encode_event(DoneEvent(job_id=job_id)))
            pipe.execute()
        else:
            self._redis.publish(channel, data)

    def publish_error(self, channel: str, job_id: str, error: ModelyardError) -> None:
        """Send the terminal error event."""
        self._redis.publish(channel, encode_event(ErrorEvent.from_error(job_id, error)))
