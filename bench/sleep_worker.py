"""A ``bin/worker`` whose model only sleeps: for measuring dispatch (rq, Redis, the API) on its own.

    .venv/bin/python bench/sleep_worker.py MODEL [--models-file FILE]

MODEL is an ``embedding`` entry of the models file whose ``source`` is ``sleep:<ms>``, e.g.

    - {name: sleep-50ms, kind: embedding, source: 'sleep:50', max_batch_size: 1}

The API routes ``/v1/embeddings`` for it as for any embedding model. Everything but the model is the
project's own worker, unchanged: ``workers.main.main`` (rq slot threads of ``workers.slot.SlotWorker``,
``workers.runtime``, ``workers.heartbeat``, ``workers.publisher``, SIGTERM drain); only the engine
loader it is given makes a :class:`SleepEngine` for ``sleep:`` models, whose batch sleeps ``<ms>`` and
returns a constant vector per input (the batching, cancel and deadline handling are
``workers.engines.pooling.PoolingEngine``'s). With ``max_batch_size: 1`` each job is one batch, so a worker
process completes at most ``1000 / ms`` jobs per second and N processes ideally N times that.
"""

from __future__ import annotations

import sys
import time

from shared.catalog import ModelSpec
from shared.jobs import EmbedJob, EmbedResult
from workers import main as worker_main
from workers.engines.base import Engine, EventSink
from workers.engines.pooling import PoolingEngine, usage_of
from workers.loaders import load_engine as load_real_engine

SOURCE_PREFIX = "sleep:"
#: Length of the constant vectors a sleep model returns.
DIMENSION = 8


class SleepEngine(PoolingEngine):
    """The project's embedding batching loop, whose "forward pass" is a fixed sleep."""

    job_type = EmbedJob

    def __init__(self, spec: ModelSpec, seconds: float) -> None:
        super().__init__(spec)
        self.seconds = seconds

    def _items(self, job: EmbedJob) -> list[str | list[int]]:
        return job.inputs

    def _count_tokens(self, items: list[str | list[int]]) -> list[int]:
        return [1] * len(items)

    def _forward(self, items: list[str | list[int]]) -> list[list[float]]:
        time.sleep(self.seconds)
        return [[1.0] + [0.0] * (DIMENSION - 1)] * len(items)

    def _result(self, job: EmbedJob, outputs: list[list[float]], tokens: list[int]) -> EmbedResult:
        return EmbedResult(embeddings=outputs, usage=usage_of(tokens), input_tokens=tokens)


def load_engine(spec: ModelSpec, sink: EventSink) -> Engine:
    """A :class:`SleepEngine` for ``source: sleep:<ms>`` entries, the project's loader for the rest."""
    if spec.source.startswith(SOURCE_PREFIX):
        return SleepEngine(spec, float(spec.source[len(SOURCE_PREFIX) :]) / 1000)
    return load_real_engine(spec, sink)


if __name__ == "__main__":
    sys.exit(worker_main.main(load_engine=load_engine))
