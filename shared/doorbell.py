"""Ringing a model's doorbell: how an idle slot learns that a job came (workers/taking.py).

The ring is a wake-up call, not the job: a slot that wakes takes whatever is queued, and a slot
that was not waiting takes jobs without one. A ring lost with a connection delays a job by at
most a slot's wait (``SLOT_WORKER_TTL - 15`` s), never loses it.
"""

from __future__ import annotations

from redis.client import Pipeline

from shared import keys
from shared.priority import Band


def ring(pipe: Pipeline, model: str, band: Band) -> None:
    """Queue a ring of ``model``'s ``band`` doorbell on ``pipe`` (two commands, no round trip)."""
    key = keys.doorbell_key(model, band)
    pipe.rpush(key, 1)
    pipe.ltrim(key, -keys.DOORBELL_MAX_RINGS, -1)


def ring_queue(pipe: Pipeline, model: str, queue_name: str) -> None:
    """Ring the doorbell of the band that ``model``'s queue ``queue_name`` belongs to (if it is one)."""
    place = keys.queue_place(model, queue_name)
    if place is not None:
        ring(pipe, model, place[0])
