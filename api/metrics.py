"""Prometheus metrics: this API process's request figures, and the fleet's state read from Redis.

Each app has its own :class:`CollectorRegistry` (nothing global: tests build many apps in one
process). With several gunicorn processes, each one counts its own requests (a scrape sees the
process that answered it); the queue, worker and engine figures come from Redis at scrape time and
are the same whichever process answers.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

from flask import current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from redis import Redis, RedisError
from rq.utils import str_to_date

from shared import keys
from shared.models import ModelCatalog

log = logging.getLogger(__name__)

EXTENSION = "modelyard.metrics"

#: Seconds: from a few ms (an embedding) to the longest request a client may wait for.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

#: Engine ``stats()`` keys that only grow: exported as ``modelyard_worker_<key>_total``.
ENGINE_COUNTERS = {
    "tokens_generated": "Tokens generated",
    "steps": "Decode steps (one forward pass of the running batch each)",
    "prefills": "Prefill forward passes",
    "batches": "Embedding/rerank batches run",
    "forward_passes": "Embedding/rerank forward passes",
    "inputs_done": "Embedding/rerank inputs processed",
    "busy_ms": "Milliseconds the engine thread spent running batches or decode steps",
    "jobs_done": "Jobs finished",
    "jobs_failed": "Jobs that failed",
    "jobs_cancelled": "Jobs cancelled (client gone, stop-job)",
    "jobs_expired": "Jobs whose deadline passed",
}
#: Engine ``stats()`` keys that go up and down: exported as ``modelyard_worker_<key>``.
ENGINE_GAUGES = {
    "last_batch_size": "Sequences in the latest decode step",
    "last_batch_jobs": "Jobs in the latest embedding/rerank batch",
    "last_batch_inputs": "Inputs in the latest embedding/rerank batch",
    "running": "Sequences decoding now",
    "waiting": "Sequences waiting for a place in the decode batch",
    "active": "Jobs submitted to the engine and not done",
    "max_running_seen": "Most sequences decoded together so far",
}

# One round trip per scrape: for each model (KEYS: its rq queue list, its live-worker set), the queue
# length, the enqueued_at of the oldest job still stored (ids of expired jobs linger in the list),
# and the live worker ids; then the status of each distinct live worker.
_SCRAPE_LUA = """
local now, job_prefix, worker_prefix = ARGV[1], ARGV[2], ARGV[3]
local models, statuses, seen = {}, {}, {}
for i = 1, #KEYS, 2 do
  local depth = redis.call('LLEN', KEYS[i])
  local oldest = false
  if depth > 0 then
    for _, id in ipairs(redis.call('LRANGE', KEYS[i], 0, 9)) do
      oldest = redis.call('HGET', job_prefix .. id, 'enqueued_at')
      if oldest then break end
    end
  end
  local ids = redis.call('ZRANGEBYSCORE', KEYS[i + 1], now, '+inf')
  for _, id in ipairs(ids) do
    if not seen[id] then
      seen[id] = true
      local status = redis.call('GET', worker_prefix .. id)
      if status then table.insert(statuses, status) end
    end
  end
  table.insert(models, {depth, oldest, #ids})
end
return {models, statuses}
"""


class FleetCollector:
    """Queue, worker and engine figures, read from Redis at each scrape (one script call)."""

    def __init__(self, redis: Redis, catalog: ModelCatalog) -> None:
        self._catalog = catalog
        self._script = redis.register_script(_SCRAPE_LUA)

    def describe(self) -> Iterable[Metric]:
        return []  # names vary with the fleet; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("modelyard_redis_up", "1 if this scrape could read Redis, else 0")
        try:
            models, statuses = self._read()
        except RedisError as exc:
            log.warning("metrics: cannot read Redis: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from self._queue_metrics(models)
        yield from self._worker_metrics(statuses)

    def _read(self) -> tuple[list[list[Any]], list[dict[str, Any]]]:
        names = [spec.name for spec in self._catalog]
        script_keys = []
        for name in names:
            script_keys += [keys.rq_queue_key(name), keys.model_workers_key(name)]
        models, raw_statuses = self._script(
            keys=script_keys, args=[time.time(), keys.RQ_JOB_PREFIX, keys.worker_key("")]
        )
        statuses = []
        for raw in raw_statuses:
            try:
                statuses.append(json.loads(raw))
            except ValueError:
                log.warning("metrics: skipping a worker status that is not JSON")
        return [[name, *row] for name, row in zip(names, models, strict=True)], statuses

    @staticmethod
    def _queue_metrics(models: list[list[Any]]) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "modelyard_queue_depth", "Jobs waiting in the model's queue", labels=["model"]
        )
        age = GaugeMetricFamily(
            "modelyard_queue_oldest_job_age_seconds",
            "Age of the oldest job waiting in the model's queue (0 when empty)",
            labels=["model"],
        )
        workers = GaugeMetricFamily(
            "modelyard_model_workers",
            "Worker processes with a live heartbeat serving the model",
            labels=["model"],
        )
        now = time.time()
        for name, queued, oldest, live in models:
            depth.add_metric([name], int(queued))
            seconds = 0.0
            if oldest:
                try:
                    seconds = max(0.0, now - str_to_date(oldest).timestamp())
                except ValueError:
                    pass
            age.add_metric([name], seconds)
            workers.add_metric([name], int(live))
        yield from (depth, age, workers)

    @staticmethod
    def _worker_metrics(statuses: list[dict[str, Any]]) -> Iterator[Metric]:
        slots = GaugeMetricFamily(
            "modelyard_worker_slots", "rq slots of a worker process for a model", labels=["model", "worker"]
        )
        busy = GaugeMetricFamily(
            "modelyard_worker_busy_slots", "Jobs a worker process is running now", labels=["worker"]
        )
        counters = {
            key: CounterMetricFamily(
                f"modelyard_worker_{key}",
                f"{text} (per worker process and model)",
                labels=["model", "worker"],
            )
            for key, text in ENGINE_COUNTERS.items()
        }
        gauges = {
            key: GaugeMetricFamily(
                f"modelyard_worker_{key}",
                f"{text} (per worker process and model)",
                labels=["model", "worker"],
            )
            for key, text in ENGINE_GAUGES.items()
        }
        for status in statuses:
            worker = str(status.get("id", "?"))
            per_model = status.get("slots")
            if isinstance(per_model, int | float):  # older workers: one number for the process
                per_model = {"": per_model}
            for model, count in (per_model or {}).items():
                if isinstance(count, int | float):
                    slots.add_metric([model, worker], count)
            if isinstance(status.get("busy"), int | float):
                busy.add_metric([worker], status["busy"])
            for model, stats in (status.get("engines") or {}).items():
                for key, value in (stats or {}).items():
                    if not isinstance(value, int | float):
                        continue
                    if key in counters:
                        counters[key].add_metric([model, worker], value)
                    elif key in gauges:
                        gauges[key].add_metric([model, worker], value)
        yield slots
        yield busy
        for family in (*counters.values(), *gauges.values()):
            if family.samples:
                yield family


class ApiMetrics:
    """The metrics of one app: request figures recorded here, fleet figures collected from Redis."""

    def __init__(self, redis: Redis, catalog: ModelCatalog) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "modelyard_requests",
            "HTTP requests (and WebSocket requests) this API process answered",
            ["endpoint", "model", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "modelyard_request_duration_seconds",
            "Seconds from a request's arrival to the end of its response (a stream's last chunk)",
            ["endpoint", "model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_token = Histogram(
            "modelyard_time_to_first_token_seconds",
            "Seconds from a streaming request's arrival to its first generated text",
            ["model"],
            buckets=FIRST_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "modelyard_queue_wait_seconds",
            "Seconds jobs waited in their model's queue before a worker started them",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(FleetCollector(redis, catalog))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def app_metrics(app=None) -> ApiMetrics:
    return (app or current_app).extensions[EXTENSION]


CONTENT_TYPE = CONTENT_TYPE_LATEST
