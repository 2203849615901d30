"""Prometheus metrics: this API process's request figures, and the fleet's state read from Redis.

Each app has its own :class:`CollectorRegistry` (nothing global: tests build many apps in one
process). With several gunicorn processes, each one counts its own requests (a scrape sees the
process that answered it); the queue, worker and engine figures come from Redis at scrape time and
are the same whichever process answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from flask import current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from redis import Redis, RedisError
from rq.utils import str_to_date

from api.batches.metrics import BatchCollector
from api.batches.store import BatchStore
from shared import keys
from shared.catalog import ModelCatalog
from shared.priority import BANDS, LANES_PER_BAND
from shared.status import ENGINE_STATS, MetricKind, WorkerStatus

log = logging.getLogger(__name__)

EXTENSION = "modelyard.metrics"

#: Seconds: from a few ms (an embedding) to the longest request a client may wait for.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def engine_metric_fields() -> dict[str, tuple[MetricKind, str]]:
    """Every engine counter of every engine kind: its metric kind and help text."""
    fields: dict[str, tuple[MetricKind, str]] = {}
    for model in ENGINE_STATS:
        for name, metric in model.metric_fields().items():
            if fields.setdefault(name, metric) != metric:
                raise TypeError(f"engine counter {name!r} has two definitions: {fields[name]} and {metric}")
    return fields


#: The engine figures, each exported as ``modelyard_worker_<name>`` (``_total`` for counters).
ENGINE_METRICS = engine_metric_fields()

#: Most ids of one queue a scrape looks at for its oldest job (see _SCRAPE_LUA), in chunks.
OLDEST_SCAN = 1024
OLDEST_CHUNK = 16

# One round trip per scrape: for each model (KEYS: its live-worker set, then its rq queue lists, band by
# band, ARGV[4] of them), each queue's length and the time its oldest job entered the band (the
# band-since field, ARGV[5], else rq's enqueued_at; ids of expired jobs linger in a list and are skipped),
# and the live worker ids; then the status of each distinct live worker.
# A queue is admitted jobs pushed at its tail (stamped as they come: oldest first) behind jobs pushed at
# its head, aged in from below or requeued (stamped as they come too: newest first). So the oldest is
# where the stamps stop falling: the scan ends at the first stamp above the oldest seen.
_SCRAPE_LUA = """
local now, job_prefix, worker_prefix, per_model = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local field, most, chunk = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local models, statuses, seen = {}, {}, {}
for m = 1, #KEYS, per_model + 1 do
  local queues = {}
  for i = m + 1, m + per_model do
    local depth = redis.call('LLEN', KEYS[i])
    local oldest, rising, start = '', false, 0
    while not rising and start < math.min(depth, most) do
      for _, id in ipairs(redis.call('LRANGE', KEYS[i], start, start + chunk - 1)) do
        local stamps = redis.call('HMGET', job_prefix .. id, field, 'enqueued_at')
        local at = stamps[1] or stamps[2]
        if at then
          if oldest == '' or at <= oldest then oldest = at else rising = true break end
        end
      end
      start = start + chunk
    end
    table.insert(queues, depth)
    table.insert(queues, oldest)
  end
  local ids = redis.call('ZRANGEBYSCORE', KEYS[m], now, '+inf')
  for _, id in ipairs(ids) do
    if not seen[id] then
      seen[id] = true
      local status = redis.call('GET', worker_prefix .. id)
      if status then table.insert(statuses, status) end
    end
  end
  table.insert(models, {#ids, queues})
end
return {models, statuses}
"""


def _age(since: bytes | str, now: float) -> float:
    """Seconds since a job's band-since or ``enqueued_at`` text (rq's format; empty: no job, 0)."""
    if not since:
        return 0.0
    try:
        return max(0.0, now - str_to_date(since).timestamp())
    except ValueError:
        return 0.0


@dataclass
class ModelQueues:
    """What a scrape read of one model: live workers, and per band the jobs queued and the oldest's age."""

    name: str
    live: int
    bands: dict[str, tuple[int, float]]


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

    def _read(self) -> tuple[list[ModelQueues], list[WorkerStatus]]:
        names = [spec.name for spec in self._catalog]
        per_model = len(BANDS) * LANES_PER_BAND
        script_keys = []
        for name in names:
            script_keys.append(keys.model_workers_key(name))
            script_keys += [keys.RQ_QUEUE_PREFIX + q for q in keys.model_queue_names(name)]
        models, raw_statuses = self._script(
            keys=script_keys,
            args=[
                time.time(),
                keys.RQ_JOB_PREFIX,
                keys.worker_key(""),
                per_model,
                keys.BAND_SINCE_FIELD,
                OLDEST_SCAN,
                OLDEST_CHUNK,
            ],
        )
        statuses = []
        for raw in raw_statuses:
            status = WorkerStatus.decode(raw)
            if status is None:
                log.warning("metrics: skipping a worker status that is not a WorkerStatus")
            else:
                statuses.append(status)
        now = time.time()
        read = []
        for name, (live, queues) in zip(names, models, strict=True):
            bands: dict[str, list[float]] = {band: [0, 0.0] for band in BANDS}
            for index in range(per_model):
                band = BANDS[index // LANES_PER_BAND]
                depth, oldest = int(queues[2 * index]), queues[2 * index + 1]
                bands[band][0] += depth
                bands[band][1] = max(bands[band][1], _age(oldest, now))
            read.append(ModelQueues(name, int(live), {b: (int(d), a) for b, (d, a) in bands.items()}))
        return read, statuses

    @staticmethod
    def _queue_metrics(models: list[ModelQueues]) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "modelyard_queue_depth", "Jobs waiting in the model's queues (every band)", labels=["model"]
        )
        age = GaugeMetricFamily(
            "modelyard_queue_oldest_job_age_seconds",
            "Age of the oldest job waiting in the model's queues (0 when empty)",
            labels=["model"],
        )
        band_depth = GaugeMetricFamily(
            "modelyard_band_queue_depth",
            "Jobs waiting in one priority band of the model (all its lanes; docs/scheduling.md)",
            labels=["model", "band"],
        )
        band_age = GaugeMetricFamily(
            "modelyard_band_oldest_job_age_seconds",
            "Seconds the longest-waiting job of one priority band of the model has been in it (0 when empty)",
            labels=["model", "band"],
        )
        workers = GaugeMetricFamily(
            "modelyard_model_workers",
            "Worker processes with a live heartbeat serving the model",
            labels=["model"],
        )
        for model in models:
            depth.add_metric([model.name], sum(d for d, _ in model.bands.values()))
            age.add_metric([model.name], max(a for _, a in model.bands.values()))
            for band, (queued, oldest) in model.bands.items():
                band_depth.add_metric([model.name, band], queued)
                band_age.add_metric([model.name, band], oldest)
            workers.add_metric([model.name], model.live)
        yield from (depth, age, band_depth, band_age, workers)

    @staticmethod
    def _worker_metrics(statuses: list[WorkerStatus]) -> Iterator[Metric]:
        slots = GaugeMetricFamily(
            "modelyard_worker_slots", "rq slots of a worker process for a model", labels=["model", "worker"]
        )
        busy = GaugeMetricFamily(
            "modelyard_worker_busy_slots", "Jobs a worker process is running now", labels=["worker"]
        )
        family = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily}
        engine = {
            name: family[kind](
                f"modelyard_worker_{name}",
                f"{text} (per worker process and model)",
                labels=["model", "worker"],
            )
            for name, (kind, text) in ENGINE_METRICS.items()
        }
        for status in statuses:
            for model, count in status.slots.items():
                slots.add_metric([model, status.id], count)
            busy.add_metric([status.id], status.busy)
            for model, stats in status.engines.items():
                for name in type(stats).metric_fields():
                    engine[name].add_metric([model, status.id], getattr(stats, name))
        yield slots
        yield busy
        for metric in engine.values():
            if metric.samples:
                yield metric


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
        self.registry.register(BatchCollector(BatchStore(redis)))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def app_metrics(app=None) -> ApiMetrics:
    return (app or current_app).extensions[EXTENSION]


CONTENT_TYPE = CONTENT_TYPE_LATEST
