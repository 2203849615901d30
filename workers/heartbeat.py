"""The worker's liveness: a TTL key plus its entry in each served model's worker set."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from redis import Redis, RedisError

from shared import keys

log = logging.getLogger(__name__)


def new_worker_id() -> str:
    """A worker process id, unique across machines and restarts."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Heartbeat:
    """Refreshes the worker's key every ``ttl / 3`` seconds from a daemon thread.

    The key's existence is the only truth about liveness: a process that dies, hangs or loses a
    model engine stops beating and disappears from ``/v1/models`` once ``ttl`` passes.
    """

    def __init__(
        self,
        redis: Redis,
        worker_id: str,
        models: list[str],
        ttl: int,
        status: Callable[[], dict[str, Any]],
        healthy: Callable[[], bool],
    ) -> None:
        self._redis = redis
        self.worker_id = worker_id
        self._models = models
        self._ttl = ttl
        self._status = status
        self._healthy = healthy
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._started_at = time.time()
        self._draining = False

    def start(self) -> None:
        """Beat once now (the models are loaded), then keep beating."""
        self.beat()
        self._thread.start()

    def beat(self) -> None:
        """Write the status key and refresh the model sets, in one round trip."""
        now = time.time()
        status = {
            "id": self.worker_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "models": self._models,
            "started_at": self._started_at,
            "beat_at": now,
            "draining": self._draining,
            **self._status(),
        }
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(keys.worker_key(self.worker_id), json.dumps(status), ex=self._ttl)
        for model in self._models:
            workers = keys.model_workers_key(model)
            if self._draining:
                pipe.zrem(workers, self.worker_id)
            else:
                pipe.zadd(workers, {self.worker_id: now + self._ttl})
            pipe.zremrangebyscore(workers, "-inf", now)
            pipe.expire(workers, self._ttl * 10)
        pipe.execute()

    def _run(self) -> None:
        while not self._stop.wait(self._ttl / 3):
            if not self._healthy():
                log.error("an engine thread died: no more heartbeats; this worker will expire")
                return
            try:
                self.beat()
            except RedisError as exc:
                log.warning("heartbeat failed (%s); retrying", exc)

    @property
    def alive(self) -> bool:
        """False once the beating thread gave up on an unhealthy engine."""
        return self._thread.is_alive()

    def drain(self) -> None:
        """Stop offering the models (admission no longer counts this worker) but keep beating:
        the running jobs are still alive, and the API's janitor must not declare them lost."""
        self._draining = True
        try:
            self.beat()
        except RedisError as exc:
            log.warning("could not announce the drain (%s)", exc)

    def stop(self) -> None:
        """Stop beating and remove the worker's key: its jobs are done."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.delete(keys.worker_key(self.worker_id))
            for model in self._models:
                pipe.zrem(keys.model_workers_key(model), self.worker_id)
            pipe.execute()
        except RedisError as exc:
            log.warning("could not deregister (%s); the key expires by itself", exc)
