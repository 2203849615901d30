"""Which waiting choices of a chat model start next: fairly across jobs, never first come first served.

Admitting sequences in arrival order let one job of many choices take every running row for as long
as its choices lasted, so a small job behind it waited for all of them. Two rules instead:

* Rows are held back for the jobs that may still arrive: with ``slots`` rq slots and ``live`` jobs in
  the engine, at most ``slots - live`` more can come, and that many rows stay free, so every newcomer
  starts on the next step (without preempting anyone, which would cost recomputing caches and could
  change what a seeded choice samples). A lone job of many choices gives up a few rows for it.
* Among the jobs with choices waiting, the one with the fewest sequences running goes next (ties: the
  earliest), one choice at a time: freed rows go to the jobs that have fewest, so running rows tend
  to an even split between the jobs that want them (max-min fairness).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping, Sequence
from typing import TypeVar

T = TypeVar("T")


def usable_rows(max_running: int, slots: int, live: int) -> int:
    """Running rows the jobs in the engine may fill: one free row is kept per job that may still come."""
    return max_running - max(0, slots - live)


def fair_order(waiting: Sequence[tuple[T, int]], running: Mapping[T, int]) -> Iterator[T]:
    """The jobs to start a choice of, one item per choice, fewest running first (ties: arrival order).

    ``waiting`` holds each job with choices left to start and how many, in arrival order; ``running``
    how many sequences each job runs now. Each item counts as started: stop iterating to start no more.
    """
    heap = [(running.get(job, 0), order, left) for order, (job, left) in enumerate(waiting) if left > 0]
    heapq.heapify(heap)
    while heap:
        count, order, left = heap[0]
        yield waiting[order][0]
        if left > 1:
            heapq.heapreplace(heap, (count + 1, order, left - 1))
        else:
            heapq.heappop(heap)
