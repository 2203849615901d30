"""Batch objects in Redis: one JSON value per batch (OpenAI's object and its owner), an index of all
batches by creation time and the set of those not yet final, which the runners take from."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis import Redis, WatchError

from shared import keys

#: Seconds a batch may run (OpenAI's only ``completion_window``).
COMPLETION_WINDOWS = {"24h": 24 * 3600}
#: Batch objects read per round trip while a list is paged.
_PAGE_READ = 100
#: Statuses after which nothing changes.
FINAL = ("failed", "completed", "expired", "cancelled")


@dataclass
class BatchRecord:
    batch: dict[str, Any]
    owner: str | None

    @property
    def id(self) -> str:
        return self.batch["id"]

    @property
    def status(self) -> str:
        return self.batch["status"]


def new_batch(
    endpoint: str, input_file_id: str, window: str, metadata: dict[str, str] | None
) -> dict[str, Any]:
    """OpenAI's batch object of a batch just created (``validating``)."""
    now = int(time.time())
    return {
        "id": f"batch_{secrets.token_hex(16)}",
        "object": "batch",
        "endpoint": endpoint,
        "model": None,
        "errors": None,
        "input_file_id": input_file_id,
        "completion_window": window,
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": now,
        "in_progress_at": None,
        "expires_at": now + COMPLETION_WINDOWS[window],
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": metadata,
    }


class BatchStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def create(self, batch: dict[str, Any], owner: str | None) -> BatchRecord:
        record = BatchRecord(batch, owner)
        pipe = self.redis.pipeline()
        pipe.set(keys.batch_key(record.id), _dump(record))
        pipe.zadd(keys.batches_key(), {record.id: time.time()})  # finer than created_at: the order
        pipe.sadd(keys.active_batches_key(), record.id)
        pipe.execute()
        return record

    def load(self, batch_id: str, owner: str | None = None) -> BatchRecord | None:
        """The batch, if it exists and ``owner`` may see it (None sees every batch)."""
        raw = self.redis.get(keys.batch_key(batch_id))
        if raw is None:
            return None
        record = _load(raw)
        if owner is not None and record.owner != owner:
            return None
        return record

    def load_many(self, batch_ids: list[str]) -> list[BatchRecord | None]:
        """The batches of ``batch_ids`` in one round trip (None for one that is gone)."""
        if not batch_ids:
            return []
        raws = self.redis.mget([keys.batch_key(i) for i in batch_ids])
        return [_load(raw) if raw is not None else None for raw in raws]

    def update(self, batch_id: str, change: Callable[[dict[str, Any]], None]) -> BatchRecord:
        """Apply ``change`` to the batch object, atomically against other writers (a cancel, the
        runner); a batch that became final leaves the active set in the same transaction."""
        key = keys.batch_key(batch_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        raise KeyError(batch_id)
                    record = _load(raw)
                    change(record.batch)
                    pipe.multi()
                    pipe.set(key, _dump(record))
                    if record.status in FINAL:
                        pipe.srem(keys.active_batches_key(), batch_id)
                    pipe.execute()
                    return record
                except WatchError:
                    continue

    def active(self) -> list[str]:
        return sorted(
            m.decode() if isinstance(m, bytes) else m for m in self.redis.smembers(keys.active_batches_key())
        )

    def page(self, owner: str | None, after: str | None, limit: int) -> tuple[list[dict[str, Any]], bool]:
        """Batches newest first, those after ``after``, at most ``limit``; and whether more follow."""
        ids = [
            m.decode() if isinstance(m, bytes) else m for m in self.redis.zrevrange(keys.batches_key(), 0, -1)
        ]
        if after is not None:
            ids = ids[ids.index(after) + 1 :] if after in ids else []
        found: list[dict[str, Any]] = []
        for start in range(0, len(ids), _PAGE_READ):  # one MGET per chunk, not a GET per batch
            chunk = ids[start : start + _PAGE_READ]
            for record in self.load_many(chunk):
                if record is None or (owner is not None and record.owner != owner):
                    continue
                if len(found) == limit:
                    return found, True
                found.append(record.batch)
        return found, False


def _dump(record: BatchRecord) -> str:
    return json.dumps({"batch": record.batch, "owner": record.owner})


def _load(raw: bytes | str) -> BatchRecord:
    value = json.loads(raw)
    return BatchRecord(value["batch"], value.get("owner"))
