"""Which of its model's queues a slot takes its next job from: strict priority across bands, round
robin across the lanes of a band (docs/scheduling.md).

rq's ``dequeue_any`` is ``BLPOP`` over the queues in the order given, which takes from the first
non-empty one: the order is the schedule. A :class:`QueueOrder` is shared by a model's slots in one
process, so the lanes go round for the process as a whole, whichever slot takes the next job.
"""

from __future__ import annotations

import threading

from rq.queue import Queue

from shared import keys
from shared.priority import BANDS, LANES_PER_BAND, Band
from workers.slot import SlotWorker


class QueueOrder:
    """The order of a model's queues for the next dequeue: bands most urgent first; within a band,
    the lane after the one served last comes first."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._next = dict.fromkeys(BANDS, 0)
        self._lock = threading.Lock()

    def arrange(self, queues: list[Queue]) -> list[Queue]:
        """``queues`` (some of the model's) in the order to take from now."""
        by_name = {queue.name: queue for queue in queues}
        with self._lock:
            starts = dict(self._next)
        ordered = []
        for band in BANDS:
            names = keys.band_queue_names(self.model, band)
            start = starts[band]
            for name in names[start:] + names[:start]:
                if name in by_name:
                    ordered.append(by_name[name])
        return ordered

    def served(self, queue: Queue) -> None:
        """A job was taken from ``queue``: its band's next turn starts at the following lane."""
        place = keys.queue_place(self.model, queue.name)
        if place is None:
            return
        band, lane = place
        with self._lock:
            self._next[band] = (lane + 1) % LANES_PER_BAND


def slot_queue_names(model: str, reserved: bool) -> list[str]:
    """The queues a slot listens to: every band, or the high band only for a reserved slot."""
    bands: tuple[Band, ...] = ("high",) if reserved else BANDS
    return keys.model_queue_names(model, bands)


class BandSlotWorker(SlotWorker):
    """A slot whose queue order comes from its process's :class:`QueueOrder` for the model."""

    def __init__(self, *args, order: QueueOrder, **kwargs) -> None:
        self._order = order
        super().__init__(*args, **kwargs)

    @property
    def _ordered_queues(self) -> list[Queue]:  # type: ignore[override]
        return self._order.arrange(self.queues)

    @_ordered_queues.setter
    def _ordered_queues(self, _value: list[Queue]) -> None:
        """rq sets its own order as the worker is made; the shared order replaces it."""

    def reorder_queues(self, reference_queue: Queue) -> None:
        """rq's hook after a dequeue: advance the band's lane (instead of rq's dequeue strategies)."""
        self._order.served(reference_queue)
