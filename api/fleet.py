"""Which models have live workers, read from the heartbeat sets workers maintain."""

from __future__ import annotations

import json
import time
from typing import Any

from redis import Redis

from shared import keys
from shared.models import ModelSpec


def live_worker_count(redis: Redis, model: str) -> int:
    """Workers of ``model`` whose heartbeat has not expired (one O(log n) command)."""
    return int(redis.zcount(keys.model_workers_key(model), time.time(), "+inf"))


def live_worker_counts(redis: Redis, specs: list[ModelSpec]) -> dict[str, int]:
    """:func:`live_worker_count` for many models in one round trip."""
    now = time.time()
    pipe = redis.pipeline(transaction=False)
    for spec in specs:
        pipe.zcount(keys.model_workers_key(spec.name), now, "+inf")
    return {spec.name: int(count) for spec, count in zip(specs, pipe.execute(), strict=True)}


def worker_statuses(redis: Redis) -> list[dict[str, Any]]:
    """The status every live worker last reported."""
    names = list(redis.scan_iter(match=keys.worker_key_pattern(), count=500))
    if not names:
        return []
    return [json.loads(raw) for raw in redis.mget(names) if raw]
