"""Which models have live workers (the heartbeat sets workers maintain) and how fast they work."""

from __future__ import annotations

import time

from redis import Redis

from shared import keys
from shared.models import ModelSpec


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
