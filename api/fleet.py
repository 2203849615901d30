"""Which models have live workers (the heartbeat sets workers maintain) and how fast they work."""

from __future__ import annotations

import time

from redis import Redis

from shared import keys
from shared.catalog import ModelSpec
from shared.errors import InvalidRequest
from shared.status import ModelCard, WorkerStatus


def live_worker_counts(redis: Redis, specs: list[ModelSpec]) -> dict[str, int]:
    """Workers per model whose heartbeat has not expired, in one round trip."""
    now = time.time()
    pipe = redis.pipeline(transaction=False)
    for spec in specs:
        pipe.zcount(keys.model_workers_key(spec.name), now, "+inf")
    return {spec.name: int(count) for spec, count in zip(specs, pipe.execute(), strict=True)}


def mean_job_seconds(redis: Redis, model: str) -> float | None:
    """Mean run time of the model's recent jobs, as workers record them; None before the first."""
    samples = [float(x) for x in redis.lrange(keys.job_durations_key(model), 0, -1)]
    return sum(samples) / len(samples) if samples else None


def wait_estimate(redis: Redis, spec: ModelSpec, ahead: int, workers: int) -> float | None:
    """Seconds until a job with ``ahead`` jobs before it starts, from recent throughput."""
    mean = mean_job_seconds(redis, spec.name)
    if mean is None or workers <= 0:
        return None
    return ahead * mean / (workers * spec.max_batch_size)


def model_cards(redis: Redis, specs: list[ModelSpec]) -> dict[str, ModelCard]:
    """The card of each model that has a live worker, as its newest worker tells it (two round trips).

    ``created`` falls back to the time that worker started when it does not know its checkpoint's.
    """
    now = time.time()
    pipe = redis.pipeline(transaction=False)
    for spec in specs:
        pipe.zrevrangebyscore(keys.model_workers_key(spec.name), "+inf", now, start=0, num=1)
    newest = {spec.name: ids[0] for spec, ids in zip(specs, pipe.execute(), strict=True) if ids}
    if not newest:
        return {}
    statuses = redis.mget([keys.worker_key(_text(worker)) for worker in newest.values()])
    cards = {}
    for name, raw in zip(newest, statuses, strict=True):
        status = WorkerStatus.decode(raw)
        if status is None:
            continue
        card = status.cards.get(name, ModelCard())
        cards[name] = (
            card if card.created is not None else card.model_copy(update={"created": int(status.started_at)})
        )
    return cards


def check_takes_tools(redis: Redis, spec: ModelSpec) -> None:
    """Refuse tools for a model whose workers say its chat template cannot render them, before the
    job is queued (with no live worker, or one too old to say, its worker refuses them itself)."""
    card = model_cards(redis, [spec]).get(spec.name)
    if card is not None and card.tool_parser is None:
        raise InvalidRequest(
            f"model {spec.name!r} cannot take tools: its chat template does not render them",
            param="tools",
            code="tools_not_supported",
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
