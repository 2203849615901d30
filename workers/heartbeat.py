"""The worker's liveness: a TTL key plus its entry in each served model's worker set."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from redis import Redis, RedisError
from redis.client import PubSub

from shared import keys
from shared.status import WorkerReport, WorkerStatus

log = logging.getLogger(__name__)

#: Seconds between two beats while beating fails: a worker is back in the fleet this soon after
#: Redis answers again (a live worker has no key until then, and the janitor waits for it).
RETRY_S = 0.25


def new_worker_id() -> str:
    """A worker process id, unique across machines and restarts."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Heartbeat:
    """Refreshes the worker's key every ``ttl / 3`` seconds from a daemon thread.

    The key's existence is the only truth about liveness: a process that dies, hangs or loses a
    model engine stops beating and disappears from ``/v1/models`` once ``ttl`` passes.

    After Redis restarts (with none of the keys, or a snapshot's stale ones) the worker beats
    again at once: a subscription of its own breaks when Redis goes away, which wakes the beating
    thread, and failed beats are retried every ``RETRY_S``.
    """

    def __init__(
        self,
        redis: Redis,
        worker_id: str,
        models: list[str],
        ttl: int,
        report: Callable[[], WorkerReport],
        healthy: Callable[[], bool],
    ) -> None:
        self._redis = redis
        self.worker_id = worker_id
        self._models = models
        self._ttl = ttl
        self._report = report
        self._healthy = healthy
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._watch = ConnectionWatch(redis, keys.worker_watch_channel(worker_id))
        self._started_at = time.time()
        self._draining = False

    def start(self, give_up: threading.Event) -> bool:
        """Beat once now (the models are loaded), then keep beating; False, without beating, if
        ``give_up`` is set while Redis does not answer yet.

        A worker started while Redis restarts (compose brings both up at once) waits for it: dying
        here would throw away a model load.
        """
        waiting = False
        while True:
            try:
                self.beat()
                break
            except RedisError as exc:
                if not waiting:
                    log.warning("Redis does not answer (%s); waiting for it before taking jobs", exc)
                    waiting = True
                if give_up.wait(RETRY_S):
                    return False
        if waiting:
            log.info("Redis answers: worker %s registered", self.worker_id)
        self._thread.start()
        return True

    def beat(self) -> None:
        """Write the status key (a :class:`WorkerStatus`: the process's ``report()`` and who it is)
        and refresh the model sets, in one round trip."""
        now = time.time()
        status = WorkerStatus(
            **dict(self._report()),
            id=self.worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            models=self._models,
            started_at=self._started_at,
            beat_at=now,
            draining=self._draining,
        )
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(keys.worker_key(self.worker_id), status.encode(), ex=self._ttl)
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
        failing = False
        try:
            while not self._pause(RETRY_S if failing else self._ttl / 3):
                if not self._healthy():
                    log.error("an engine thread died: no more heartbeats; this worker will expire")
                    return
                try:
                    self.beat()
                except RedisError as exc:
                    if not failing:
                        log.warning("heartbeat failed (%s); retrying every %.2fs", exc, RETRY_S)
                    failing = True
                    continue
                if failing:
                    log.info("Redis answers again: worker %s registered anew", self.worker_id)
                    failing = False
        finally:
            self._watch.close()

    def _pause(self, seconds: float) -> bool:
        """Wait ``seconds``, less if Redis drops the watch's connection; True once stopped."""
        if self._watch.wait(seconds, self._stop):
            log.info("lost the connection to Redis; beating again as soon as it answers")
        return self._stop.is_set()

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


class _WatchPubSub(PubSub):
    """Notes when redis-py re-made the connection by itself (it may do so without raising)."""

    reconnected = False

    def on_connect(self, connection) -> None:
        self.reconnected = True
        super().on_connect(connection)


class ConnectionWatch:
    """A subscription to a channel nobody publishes on, kept to learn at once that Redis went away.

    A restarted Redis drops every connection; this one's breaking ends :meth:`wait` early, where
    a plain timer would sleep on while the worker's key is missing.
    """

    def __init__(self, redis: Redis, channel: str) -> None:
        self._redis = redis
        self._channel = channel
        self._pubsub: _WatchPubSub | None = None

    def wait(self, seconds: float, stop: threading.Event) -> bool:
        """Sleep ``seconds`` (or until ``stop``); True, early, if the connection broke."""
        deadline = time.monotonic() + seconds
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._pubsub is None:
                try:
                    self._pubsub = _WatchPubSub(self._redis.connection_pool, ignore_subscribe_messages=True)
                    self._pubsub.subscribe(self._channel)
                except (RedisError, OSError):  # nothing to watch yet: a plain sleep
                    self.close()
                    stop.wait(remaining)
                    return False
            try:
                # Short reads: ``stop`` is seen within a second.
                self._pubsub.get_message(timeout=min(remaining, 1.0))
            except (RedisError, OSError):
                self.close()
                return True
            if self._pubsub.reconnected:
                self.close()
                return True
        return False

    def close(self) -> None:
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except (RedisError, OSError):
                pass
            self._pubsub = None
