"""Aging: a job that waited ``Settings.priority_aging_s`` in its band moves up one, to the front of
the same lane of the next band, so that a busy high band never starves the others (docs/scheduling.md).

One API process at a time sweeps (a short Redis lock), every ``interval``, one script call per
model. A lane is FIFO, so only its oldest jobs are looked at: the sweep stops at the first one that
is young enough. A job's time in its band starts at its ``enqueued_at``, then at the moment it was
moved (:data:`shared.keys.BAND_SINCE_FIELD` in its rq hash). The script moves the job from list to
list atomically (a slot's ``BLPOP`` takes it from one or the other, never both) and rewrites its
``origin``, so that rq's registries and a requeue find its new queue.
"""

from __future__ import annotations

import datetime
import logging
import threading

from redis import Redis, RedisError
from rq.queue import Queue
from rq.utils import utcformat

from shared import keys
from shared.catalog import ModelCatalog
from shared.doorbell import ring
from shared.priority import BANDS, LANES_PER_BAND

log = logging.getLogger(__name__)

#: Most jobs one sweep moves out of one lane (a burst that aged together goes over a few sweeps).
MAX_MOVES_PER_LANE = 100

# KEYS: the model's queue lists, band by band (LANES_PER_BAND each, most urgent first).
# ARGV: cutoff (utcformat: those timestamps sort as text), now (utcformat), lanes, job key prefix,
# the band-since field, rq's set of queues, the most moves per lane. Returns how many jobs moved.
_AGE_LUA = """
local cutoff, now, lanes, job_prefix, field = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local registry, most = ARGV[6], tonumber(ARGV[7])
local moved = 0
for src_index = lanes + 1, #KEYS do
  local src, dst = KEYS[src_index], KEYS[src_index - lanes]
  local taken = {}
  while #taken < most do
    local id = redis.call('LINDEX', src, 0)
    if not id then break end
    local job = job_prefix .. id
    local since = redis.call('HGET', job, field) or redis.call('HGET', job, 'enqueued_at')
    if since and since > cutoff then break end
    redis.call('LPOP', src)
    if redis.call('EXISTS', job) == 1 then
      redis.call('HSET', job, field, now, 'origin', string.sub(dst, 10))
      table.insert(taken, id)
    end
  end
  for i = #taken, 1, -1 do
    redis.call('LPUSH', dst, taken[i])
  end
  if #taken > 0 then
    redis.call('SADD', registry, dst)
    moved = moved + #taken
  end
end
return moved
"""


class Ager:
    """A daemon thread moving long-waiting jobs of every model up a band."""

    def __init__(
        self, redis: Redis, catalog: ModelCatalog, owner: str, aging_s: float, interval: float = 1.0
    ):
        self._redis = redis
        self._catalog = catalog
        self._owner = owner
        self.aging_s = aging_s
        self._interval = min(interval, aging_s / 2)
        self._script = redis.register_script(_AGE_LUA)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="modelyard-aging", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                lock = keys.aging_lock_key()
                if self._redis.set(lock, self._owner, nx=True, px=int(self._interval * 900)):
                    self.sweep()
            except RedisError as exc:
                log.warning("aging: cannot reach Redis (%s)", exc)

    def sweep(self) -> int:
        """Move every job that waited ``aging_s`` in its band up one; returns how many moved."""
        now = datetime.datetime.now(datetime.UTC)
        cutoff = utcformat(now - datetime.timedelta(seconds=self.aging_s))
        moved = 0
        for spec in self._catalog:
            queue_keys = [keys.RQ_QUEUE_PREFIX + name for name in keys.model_queue_names(spec.name, BANDS)]
            count = int(
                self._script(
                    keys=queue_keys,
                    args=[
                        cutoff,
                        utcformat(now),
                        LANES_PER_BAND,
                        keys.RQ_JOB_PREFIX,
                        keys.BAND_SINCE_FIELD,
                        Queue.redis_queues_keys,
                        MAX_MOVES_PER_LANE,
                    ],
                )
            )
            if count:
                log.info("aging: %d jobs of %s moved up a band", count, spec.name)
                pipe = self._redis.pipeline(transaction=False)
                for band in BANDS[:-1]:  # every band a job can move into
                    ring(pipe, spec.name, band)
                pipe.execute()
            moved += count
        return moved
