"""Micro-batching engines for models that run one forward pass per batch: embeddings and rerank.

Jobs that are pending together are pooled: their inputs are sorted by length and cut into forward passes
of at most ``spec.max_batch_tokens`` padded tokens, and each job gets its own results back in its order.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from shared.errors import (
    Cancelled,
    DeadlineExceeded,
    InternalError,
    InvalidRequest,
    ModelyardError,
    ServiceUnavailable,
)
from shared.jobs import EmbedJob, EmbedResult, RerankJob, RerankResult, Usage
from shared.models import ModelSpec
from workers.engines.base import AnyJob, AnyResult, Engine, Ticket
from workers.models.embedding import Embedder
from workers.models.rerank import Reranker, sigmoid

logger = logging.getLogger(__name__)

#: Seconds stop() waits for a forward pass in progress before giving up on the engine thread.
STOP_TIMEOUT = 60.0


def plan_passes(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group input indices into forward passes of at most ``max_tokens`` padded tokens.

    Inputs are sorted by length so each pass pads little; a pass is padded to its longest input, so
    ``longest * count <= max_tokens``. An input longer than the budget gets a pass of its own.
    """
    passes: list[list[int]] = []
    current: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        # Ascending order: the input being added is the longest of the pass so far.
        if current and lengths[index] * (len(current) + 1) > max_tokens:
            passes.append(current)
            current = []
        current.append(index)
    if current:
        passes.append(current)
    return passes


def usage_of(tokens: Sequence[int]) -> Usage:
    """Usage of a pooling job: every token is a prompt token."""
    total = sum(tokens)
    return Usage(prompt_tokens=total, total_tokens=total)


class _Pending:
    """One live ticket inside a batch: its inputs' token counts and the outputs gathered so far."""

    def __init__(self, ticket: Ticket, items: list[Any], tokens: list[int]) -> None:
        self.ticket = ticket
        self.items = items
        self.tokens = tokens
        self.outputs: list[Any] = [None] * len(items)


class PoolingEngine(Engine):
    """Shared batching loop; subclasses say how to split a job into inputs and run a forward pass."""

    job_type: type[EmbedJob] | type[RerankJob]
    #: The request field an empty-input error points at.
    _input_param = "input"

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self._queue: queue.SimpleQueue[Ticket | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopping = False
        self._active = 0
        self._stats = {
            "batches": 0,
            "forward_passes": 0,
            "last_batch_jobs": 0,
            "last_batch_inputs": 0,
            "last_batch_passes": 0,
            "jobs_done": 0,
            "jobs_failed": 0,
            "jobs_cancelled": 0,
            "jobs_expired": 0,
            "inputs_done": 0,
            "busy_ms": 0,
        }

    # -- what subclasses provide ------------------------------------------------------------------

    @abstractmethod
    def _items(self, job: Any) -> list[Any]:
        """The job's inputs, one per forward-pass row."""

    @abstractmethod
    def _count_tokens(self, items: list[Any]) -> list[int]:
        """Tokens each input uses, after truncation."""

    @abstractmethod
    def _forward(self, items: list[Any]) -> list[Any]:
        """One forward pass: an output per input, in order."""

    @abstractmethod
    def _result(self, job: Any, outputs: list[Any], tokens: list[int]) -> AnyResult:
        """The job's result from its outputs and token counts, in input order."""

    def _validate(self, job: Any) -> None:
        """Refuse a job this model cannot serve (raises :class:`InvalidRequest`); default: accept all."""

    # -- Engine -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the engine thread."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"engine-{self.spec.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Let a forward pass in progress end, fail every other pending job and join the engine thread."""
        with self._lock:
            self._stopping = True
            self._queue.put(None)  # wakes the thread; every ticket queued before it is seen below
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT)
            if self._thread.is_alive():
                logger.warning("engine %s did not stop within %ss", self.spec.name, STOP_TIMEOUT)
        while True:
            try:
                ticket = self._queue.get_nowait()
            except queue.Empty:
                break
            if ticket is not None:
                self._fail(ticket, ServiceUnavailable(f"model {self.spec.name!r} is shutting down"))

    def submit(self, job: AnyJob, cancel: threading.Event) -> Ticket:
        """Queue ``job`` for the next batch; raises InvalidRequest for a job with no inputs."""
        if not isinstance(job, self.job_type):
            raise InvalidRequest(
                f"model {self.spec.name!r} does not serve {job.type} requests", param="model"
            )
        if not self._items(job):
            raise InvalidRequest("the request has no inputs", param=self._input_param)
        self._validate(job)
        ticket = Ticket(job, cancel)
        with self._lock:
            if self._stopping:
                raise ServiceUnavailable(f"model {self.spec.name!r} is shutting down")
            self._active += 1
            self._queue.put(ticket)
        return ticket

    @property
    def active(self) -> int:
        """Jobs submitted and not yet done."""
        with self._lock:
            return self._active

    def stats(self) -> dict[str, int]:
        """Counters for tests and metrics; ``last_batch_*`` describe the latest batch with live jobs."""
        with self._lock:
            return dict(self._stats)

    # -- engine thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            batch = [] if first is None else [first]
            # Jobs that arrived while the last batch ran share the next one.
            while True:
                try:
                    ticket = self._queue.get_nowait()
                except queue.Empty:
                    break
                if ticket is not None:
                    batch.append(ticket)
            if self._stopping:
                for ticket in batch:
                    self._fail(ticket, ServiceUnavailable(f"model {self.spec.name!r} is shutting down"))
                return
            try:
                self._run_batch(batch)
            except Exception:  # a bug here must not kill the thread and strand every later job
                logger.exception("engine %s: batch failed", self.spec.name)
                for ticket in batch:
                    if not ticket.done:
                        self._fail(ticket, InternalError("the model failed to run this request"))

    def _dropped(self, ticket: Ticket, now: float) -> bool:
        """Fail a cancelled or expired ticket; True if it was dropped."""
        if ticket.cancel.is_set():
            self._fail(ticket, Cancelled("the request was cancelled"), counter="jobs_cancelled")
            return True
        if ticket.job.deadline <= now:
            self._fail(ticket, DeadlineExceeded("the request's deadline passed"), counter="jobs_expired")
            return True
        return False

    def _run_batch(self, batch: list[Ticket]) -> None:
        began = time.perf_counter()
        try:
            self._run_live(batch)
        finally:
            with self._lock:
                self._stats["busy_ms"] += round((time.perf_counter() - began) * 1000)

    def _run_live(self, batch: list[Ticket]) -> None:
        now = time.time()
        live: list[_Pending] = []
        for ticket in batch:
            if self._dropped(ticket, now):
                continue
            items = self._items(ticket.job)
            try:
                tokens = self._count_tokens(items)
            except Exception:
                logger.exception("engine %s: tokenizing job %s failed", self.spec.name, ticket.job.job_id)
                self._fail(ticket, InternalError("the model failed to tokenize this request"))
                continue
            live.append(_Pending(ticket, items, tokens))
        if not live:
            return

        # Flat view of every input: (owner, index within owner).
        rows = [(pending, i) for pending in live for i in range(len(pending.items))]
        lengths = [pending.tokens[i] for pending, i in rows]
        passes = plan_passes(lengths, self.spec.max_batch_tokens)
        started = time.monotonic()
        ran = 0
        for indices in passes:
            now = time.time()
            chunk = [rows[k] for k in indices if not rows[k][0].ticket.done]
            chunk = [(p, i) for p, i in chunk if not self._dropped(p.ticket, now)]
            if not chunk:
                continue
            try:
                outputs = self._forward([p.items[i] for p, i in chunk])
                if len(outputs) != len(chunk):
                    raise RuntimeError(
                        f"forward pass returned {len(outputs)} outputs for {len(chunk)} inputs"
                    )
            except Exception:
                logger.exception("engine %s: forward pass of %d inputs failed", self.spec.name, len(chunk))
                for p, _ in chunk:
                    if not p.ticket.done:
                        self._fail(p.ticket, InternalError("the model failed to run this request"))
                continue
            ran += 1
            for (p, i), output in zip(chunk, outputs, strict=True):
                p.outputs[i] = output

        for p in live:
            if p.ticket.done:
                continue
            try:
                result = self._result(p.ticket.job, p.outputs, p.tokens)
            except Exception:
                logger.exception(
                    "engine %s: building the result of %s failed", self.spec.name, p.ticket.job.job_id
                )
                self._fail(p.ticket, InternalError("the model failed to run this request"))
                continue
            self._finish(p.ticket, result, inputs=len(p.items))

        with self._lock:
            self._stats["batches"] += 1
            self._stats["forward_passes"] += ran
            self._stats["last_batch_jobs"] = len(live)
            self._stats["last_batch_inputs"] = len(rows)
            self._stats["last_batch_passes"] = ran
        logger.debug(
            "engine %s: %d jobs, %d inputs, %d passes in %.3fs",
            self.spec.name,
            len(live),
            len(rows),
            ran,
            time.monotonic() - started,
        )

    def _finish(self, ticket: Ticket, result: AnyResult, *, inputs: int) -> None:
        with self._lock:
            if ticket.done:  # completing twice would count it twice
                return
            self._active -= 1
            self._stats["jobs_done"] += 1
            self._stats["inputs_done"] += inputs
        ticket.finish(result)

    def _fail(self, ticket: Ticket, error: ModelyardError, *, counter: str = "jobs_failed") -> None:
        with self._lock:
            if ticket.done:
                return
            self._active -= 1
            self._stats[counter] += 1
        ticket.fail(error)


class EmbeddingEngine(PoolingEngine):
    """Embeds the inputs of :class:`EmbedJob` s, pooling concurrent jobs into shared forward passes."""

    job_type = EmbedJob

    def __init__(self, embedder: Embedder, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.embedder = embedder

    def _items(self, job: EmbedJob) -> list[str | list[int]]:
        return job.inputs

    def _validate(self, job: EmbedJob) -> None:
        if job.dimensions is not None:
            dimension = self.embedder.dimension
            if not 1 <= job.dimensions <= dimension:
                raise InvalidRequest(
                    f"dimensions must be between 1 and {dimension}, this model's embedding size",
                    param="dimensions",
                )
        for i, item in enumerate(job.inputs):
            if isinstance(item, list):
                vocab = self.embedder.vocab_size
                if not all(0 <= token < vocab for token in item):
                    raise InvalidRequest(
                        f"input {i} has a token id outside the vocabulary of {vocab}", param=f"input.{i}"
                    )

    def _count_tokens(self, items: list[str | list[int]]) -> list[int]:
        return self.embedder.count_tokens(items)

    def _forward(self, items: list[str | list[int]]) -> list[np.ndarray]:
        return list(self.embedder.embed(items))

    def _result(self, job: EmbedJob, outputs: list[np.ndarray], tokens: list[int]) -> EmbedResult:
        vectors = np.stack(outputs)
        if job.dimensions is not None and job.dimensions < vectors.shape[1]:
            # Matryoshka-style: keep the leading dimensions and make each vector unit length again.
            vectors = vectors[:, : job.dimensions]
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return EmbedResult(
            embeddings=vectors.astype(np.float32).tolist(), usage=usage_of(tokens), input_tokens=tokens
        )


class RerankEngine(PoolingEngine):
    """Scores the documents of :class:`RerankJob` s; pairs of different queries share forward passes."""

    job_type = RerankJob
    _input_param = "documents"

    def __init__(self, reranker: Reranker, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.reranker = reranker

    def _items(self, job: RerankJob) -> list[tuple[str, str]]:
        return [(job.query, doc) for doc in job.documents]

    def _count_tokens(self, items: list[tuple[str, str]]) -> list[int]:
        return self.reranker.count_pair_tokens(items)

    def _forward(self, items: list[tuple[str, str]]) -> list[float]:
        # Logits: jobs that want raw scores and jobs that want probabilities share a pass.
        return self.reranker.logits_pairs(items)

    def _result(self, job: RerankJob, outputs: list[float], tokens: list[int]) -> RerankResult:
        scores = outputs if job.raw_scores else [sigmoid(x) for x in outputs]
        return RerankResult(scores=scores, usage=usage_of(tokens))
