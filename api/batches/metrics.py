"""The batches not yet final, at each ``/metrics`` scrape: how many per status, and each one's
progress (its ``request_counts``). Final batches leave the set, so the labels stay bounded."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from redis import RedisError

from api.batches.store import BatchStore

log = logging.getLogger(__name__)


class BatchCollector:
    def __init__(self, store: BatchStore) -> None:
        self._store = store

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        try:
            records = [r for r in self._store.load_many(self._store.active()) if r is not None]
        except RedisError as exc:
            log.warning("metrics: cannot read the batches: %s", exc)
            return
        statuses = GaugeMetricFamily(
            "modelyard_batches", "Batches not yet final, per status", labels=["status"]
        )
        for status, count in sorted(Counter(r.status for r in records).items()):
            statuses.add_metric([status], count)
        lines = GaugeMetricFamily(
            "modelyard_batch_requests",
            "Request lines of each batch not yet final: total, completed and failed so far",
            labels=["batch", "endpoint", "state"],
        )
        for record in records:
            for state, count in record.batch["request_counts"].items():
                lines.add_metric([record.id, record.batch["endpoint"], state], count)
        yield statuses
        yield lines
