"""A ``bin/worker`` whose model only sleeps: for measuring dispatch (rq, Redis, the API) on its own.

    .venv/bin/python bench/sleep_worker.py MODEL [--models-file FILE]

MODEL is an ``embedding`` entry of the models file whose ``source`` is ``sleep:<ms>``, e.g.

    - {name: sleep-50ms, kind: embedding, source: 'sleep:50', max_batch_size: 1}

The API routes ``/v1/embeddings`` for it as for any embedding model. Everything but the model is the
project's own worker, unchanged: ``workers.main.main`` (rq slot threads of ``workers.slot.SlotWorker``,
``workers.runtime``, ``workers.heartbeat``, ``workers.publisher``, SIGTERM drain); only the engine
that ``workers.main`` loads is swapped for :class:`SleepEngine`, whose batch sleeps ``<ms>`` and
returns a constant vector per input. With ``max_batch_size: 1`` each job is one batch, so a worker
process completes at most ``1000 / ms`` jobs per second and N processes ideally N times that.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from shared.errors import (  # noqa: E402
    Cancelled,
    DeadlineExceeded,
    InvalidRequest,
    ModelyardError,
    ServiceUnavailable,
)
from shared.jobs import EmbedJob, EmbedResult, Usage  # noqa: E402
from shared.models import ModelSpec  # noqa: E402
from workers import main as worker_main  # noqa: E402
from workers.engines.base import AnyJob, Engine, EventSink, Ticket  # noqa: E402
from workers.loaders import load_engine as load_real_engine  # noqa: E402

SOURCE_PREFIX = "sleep:"
#: Length of the constant vectors a sleep model returns.
DIMENSION = 8


class SleepEngine(Engine):
    """Embedding jobs whose "forward pass" is a fixed sleep per batch (jobs pending together share one)."""

    def __init__(self, spec: ModelSpec, seconds: float) -> None:
        self.spec = spec
        self.seconds = seconds
        self._queue: queue.SimpleQueue[Ticket | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = False
        self._active = 0
        self._stats = {"batches": 0, "last_batch_jobs": 0, "jobs_done": 0, "jobs_failed": 0, "inputs_done": 0}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"sleep-{self.spec.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._queue.put(None)
        if self._thread is not None:
            self._thread.join(10)
        while True:
            try:
                ticket = self._queue.get_nowait()
            except queue.Empty:
                break
            if ticket is not None:
                self._end(ticket, ServiceUnavailable(f"model {self.spec.name!r} is shutting down"))

    def submit(self, job: AnyJob, cancel: threading.Event) -> Ticket:
        if not isinstance(job, EmbedJob):
            raise InvalidRequest(f"model {self.spec.name!r} only serves embeddings", param="model")
        ticket = Ticket(job, cancel)
        with self._lock:
            if self._stopping:
                raise ServiceUnavailable(f"model {self.spec.name!r} is shutting down")
            self._active += 1
            self._queue.put(ticket)
        return ticket

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._stats)

    @property
    def active(self) -> int:
        with self._lock:
            return self._active

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            batch = [] if first is None else [first]
            while True:
                try:
                    ticket = self._queue.get_nowait()
                except queue.Empty:
                    break
                if ticket is not None:
                    batch.append(ticket)
            if self._stopping:
                for ticket in batch:
                    self._end(ticket, ServiceUnavailable(f"model {self.spec.name!r} is shutting down"))
                return
            time.sleep(self.seconds)
            now = time.time()
            for ticket in batch:
                if ticket.cancel.is_set():
                    self._end(ticket, Cancelled("the request was cancelled"))
                elif ticket.job.deadline <= now:
                    self._end(ticket, DeadlineExceeded("the request's deadline passed"))
                else:
                    n = len(ticket.job.inputs)
                    vector = [1.0] + [0.0] * (DIMENSION - 1)
                    usage = Usage(prompt_tokens=n, total_tokens=n)
                    self._end(ticket, EmbedResult(embeddings=[vector] * n, usage=usage), inputs=n)
            with self._lock:
                self._stats["batches"] += 1
                self._stats["last_batch_jobs"] = len(batch)

    def _end(self, ticket: Ticket, outcome: EmbedResult | ModelyardError, inputs: int = 0) -> None:
        with self._lock:
            if ticket.done:
                return
            self._active -= 1
            if isinstance(outcome, EmbedResult):
                self._stats["jobs_done"] += 1
                self._stats["inputs_done"] += inputs
            else:
                self._stats["jobs_failed"] += 1
        if isinstance(outcome, EmbedResult):
            ticket.finish(outcome)
        else:
            ticket.fail(outcome)


def load_engine(spec: ModelSpec, sink: EventSink) -> Engine:
    """A :class:`SleepEngine` for ``source: sleep:<ms>`` entries, the project's loader for the rest."""
    if spec.source.startswith(SOURCE_PREFIX):
        return SleepEngine(spec, float(spec.source[len(SOURCE_PREFIX) :]) / 1000)
    return load_real_engine(spec, sink)


if __name__ == "__main__":
    # workers.main looks load_engine up as a module global when it loads the models.
    worker_main.load_engine = load_engine
    sys.exit(worker_main.main())
