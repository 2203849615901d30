"""The take: how a slot moves a job off its model's queues without ever losing it.

rq's ``BLPOP`` over several queues pops a job in Redis and hands it to a connection that may be
dead by then (a host cut off, a process killed between the pop and the start): the job is in no
queue and never started, and nothing finds it again. Here a slot takes with a script that moves
the job id from the first non-empty queue into the slot's takings hash
(:func:`shared.keys.slot_takings_key`) in the same step, and the start of the job removes it in
the transaction that registers it as started (workers/slot.py). So a job is always queued, taken
or started. Takings go back to the front of their queues when the slot learns that its take's
answer was lost (it returns its own), and when its worker stops beating (the API's janitor).

An idle slot does not poll: it blocks on its bands' doorbells (:mod:`shared.doorbell`) and takes
when one rings.
"""

from __future__ import annotations

from redis import Redis

from shared import keys

# KEYS: the slot's takings, the takers hash, one doorbell per band, then each band's queues
# (ARGV[4] of them per band), bands most urgent first, in the order to take from.
# ARGV: slot name, worker id, bands, queues per band, rq's job key prefix.
# Returns {queue key, job id, the job's hash as a flat list}, or false when every queue is empty.
# A band found empty drops its doorbell's rings: they were for jobs already taken.
_TAKE_LUA = """
local slot, worker, job_prefix = ARGV[1], ARGV[2], ARGV[5]
local bands, per_band = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('HSET', KEYS[2], slot, worker)
for b = 0, bands - 1 do
  local bell = KEYS[3 + b]
  local first = 3 + bands + b * per_band
  for q = first, first + per_band - 1 do
    local id = redis.call('LPOP', KEYS[q])
    while id do
      local fields = redis.call('HGETALL', job_prefix .. id)
      if #fields > 0 then
        redis.call('HSET', KEYS[1], id, KEYS[q] .. '\\n' .. bell)
        local left = 0
        for r = first, first + per_band - 1 do left = left + redis.call('LLEN', KEYS[r]) end
        if left == 0 then redis.call('DEL', bell) end
        return {KEYS[q], id, fields}
      end
      id = redis.call('LPOP', KEYS[q])  -- a job deleted while queued: nothing to run
    end
  end
  redis.call('DEL', bell)
end
return false
"""

# KEYS: a slot's takings, the takers hash. ARGV: the slot's name, 1 to forget the slot too.
# Every taken job goes back to the front of its queue and rings its band. Returns how many.
_RETURN_LUA = """
local taken = redis.call('HGETALL', KEYS[1])
for i = 1, #taken, 2 do
  local sep = string.find(taken[i + 1], '\\n', 1, true)
  local queue, bell = string.sub(taken[i + 1], 1, sep - 1), string.sub(taken[i + 1], sep + 1)
  redis.call('LPUSH', queue, taken[i])
  redis.call('RPUSH', bell, 1)
  redis.call('LTRIM', bell, -tonumber(ARGV[3]), -1)
end
redis.call('DEL', KEYS[1])
if ARGV[2] == '1' then redis.call('HDEL', KEYS[2], ARGV[1]) end
return #taken / 2
"""


class Takings:
    """The take and return scripts, registered once per client."""

    def __init__(self, redis: Redis) -> None:
        self._take = redis.register_script(_TAKE_LUA)
        self._return = redis.register_script(_RETURN_LUA)

    def take(
        self, slot: str, worker_id: str, bells: list[str], queue_keys: list[str]
    ) -> tuple[str, str, dict[bytes, bytes]] | None:
        """Take the first job of ``queue_keys`` (``len(queue_keys) / len(bells)`` per band, in
        order) for ``slot``: its queue key, id and rq hash; None if every queue is empty."""
        per_band = len(queue_keys) // len(bells)
        taken = self._take(
            keys=[keys.slot_takings_key(slot), keys.takers_key(), *bells, *queue_keys],
            args=[slot, worker_id, len(bells), per_band, keys.RQ_JOB_PREFIX],
        )
        if not taken:
            return None
        queue_key, job_id, flat = taken
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        return _text(queue_key), _text(job_id), fields

    def give_back(self, slot: str, *, forget: bool = False) -> int:
        """Put ``slot``'s takings back at the front of their queues; ``forget`` also drops the slot
        from the takers (it stops, or its worker is dead). Returns how many jobs went back."""
        return int(
            self._return(
                keys=[keys.slot_takings_key(slot), keys.takers_key()],
                args=[slot, "1" if forget else "0", keys.DOORBELL_MAX_RINGS],
            )
        )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
