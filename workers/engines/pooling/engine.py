"""The micro-batching loop of models that run one forward pass per batch (embeddings, rerank).

Jobs that are pending together are pooled: their inputs are sorted by length and cut into forward passes
of at most ``spec.max_batch_tokens`` padded tokens, and each job gets its own results back in its order.
With ``spec.streams`` > 1, several engine threads run passes at once: a batch's passes are cut finer
while other streams are idle and offered to them, so one big job keeps every stream busy.
Subclasses (``embedding``, ``rerank``) say what a job's inputs are and how a pass runs.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from shared.catalog import ModelSpec
from shared.errors import (
    Cancelled,
    DeadlineExceeded,
    InternalError,
    InvalidRequest,
    ModelyardError,
    ServiceUnavailable,
)
from shared.jobs import AnyJob, AnyResult, EmbedJob, RerankJob, Usage
from shared.status import PoolingStats
from workers.engines.base import Engine, Ticket, count_outcome
from workers.engines.pooling.passes import plan_passes, spread_passes

logger = logging.getLogger(__name__)

#: Seconds stop() waits for a forward pass in progress before giving up on the engine thread.
STOP_TIMEOUT = 60.0


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


class _Offer:
    """A pass of a batch offered to the idle streams; whoever takes it off the offers runs it."""

    def __init__(self, run: Callable[[], int]) -> None:
        self._run = run
        self.ran = 0
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self.ran = self._run()
        except Exception:  # a bug here must kill neither thread; the batch's results show the gap
            logger.exception("a shared forward pass failed")
        finally:  # its batch's thread waits on it: it must always end
            self.done.set()


class PoolingEngine(Engine):
    """Shared batching loop; subclasses say how to split a job into inputs and run a forward pass."""

    job_type: type[EmbedJob] | type[RerankJob]
    #: The request field an empty-input error points at.
    _input_param = "input"

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        #: Its engine threads: ``spec.streams`` forward passes run at once (the model must allow it).
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        #: Signalled when a ticket or an offer arrives, or the engine stops; shares ``_lock``.
        self._work = threading.Condition(self._lock)
        self._tickets: deque[Ticket] = deque()
        #: Passes of running batches that an idle stream may take, oldest first (before new tickets).
        self._offers: deque[_Offer] = deque()
        self._stopping = False
        self._active = 0
        #: Engine threads waiting for work.
        self._idle = 0
        #: Counters, changed under ``_lock``; :meth:`stats` adds ``active``.
        self._stats = PoolingStats()

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
        """Start the engine threads, one per stream."""
        if self._threads:
            return
        streams = self.spec.streams or 1
        self._threads = [
            threading.Thread(target=self._run, name=f"engine-{self.spec.name}-{k}", daemon=True)
            for k in range(streams)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """Let the forward passes in progress end, fail every other pending job and join the engine
        threads."""
        with self._lock:
            self._stopping = True
            self._work.notify_all()
        deadline = time.monotonic() + STOP_TIMEOUT
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                logger.warning("engine %s did not stop within %ss", self.spec.name, STOP_TIMEOUT)
                break
        for ticket in self._drain():
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
            self._tickets.append(ticket)
            self._work.notify()
        return ticket

    @property
    def alive(self) -> bool:
        """Whether every engine thread runs (one that died would strand the jobs it took)."""
        return bool(self._threads) and all(thread.is_alive() for thread in self._threads)

    @property
    def active(self) -> int:
        """Jobs submitted and not yet done."""
        with self._lock:
            return self._active

    def stats(self) -> PoolingStats:
        """Counters for tests and metrics; ``last_batch_*`` describe the latest batch with live jobs."""
        with self._lock:
            return self._stats.model_copy(update={"active": self._active})

    # -- engine thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
                while not (self._offers or self._tickets or self._stopping):
                    self._work.wait()
                self._idle -= 1
                # Another batch's pass comes first: that batch's jobs have waited longest.
                offer = self._offers.popleft() if self._offers else None
                if offer is None and not self._stopping:
                    # Jobs that arrived while the last batch ran share the next one; with other
                    # streams idle, this one takes an even share of what waits and leaves them the rest.
                    most = -(-len(self._tickets) // (1 + self._idle))
                    batch = [self._tickets.popleft() for _ in range(most)]
            if offer is not None:
                offer.run()
                continue
            if self._stopping:
                return  # stop() fails what is left once every thread has left
            try:
                self._run_batch(batch)
            except Exception:  # a bug here must not kill the thread and strand every later job
                logger.exception("engine %s: batch failed", self.spec.name)
                for ticket in batch:
                    if not ticket.done:
                        self._fail(ticket, InternalError("the model failed to run this request"))

    def _drain(self) -> list[Ticket]:
        """Every ticket queued now, taken off the queue."""
        with self._lock:
            tickets = list(self._tickets)
            self._tickets.clear()
        return tickets

    def _dropped(self, ticket: Ticket, now: float) -> bool:
        """Fail a cancelled or expired ticket; True if it was dropped."""
        if ticket.cancel.is_set():
            self._fail(ticket, Cancelled("the request was cancelled"))
            return True
        if ticket.job.deadline <= now:
            self._fail(ticket, DeadlineExceeded("the request's deadline passed"))
            return True
        return False

    def _run_batch(self, batch: list[Ticket]) -> None:
        began = time.perf_counter()
        try:
            self._run_live(batch)
        finally:
            with self._lock:
                self._stats.busy_ms += round((time.perf_counter() - began) * 1000)

    def _run_live(self, batch: list[Ticket]) -> None:
        now = time.time()
        live: list[_Pending] = []
        for ticket in batch:
            if self._dropped(ticket, now):
                continue
            items = self._items(ticket.job)
            try:
                tokens = self._count_tokens(items)
            except ModelyardError as error:  # an input the tokenizer cannot take: its job's 400
                logger.info("engine %s: job %s refused: %s", self.spec.name, ticket.job.job_id, error)
                self._fail(ticket, error)
                continue
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
        with self._lock:
            idle = self._idle
        if idle:
            passes = spread_passes(passes, 1 + idle)
        started = time.monotonic()
        ran = self._run_passes([[rows[k] for k in indices] for indices in passes], idle)

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
            self._stats.batches += 1
            self._stats.forward_passes += ran
            self._stats.last_batch_jobs = len(live)
            self._stats.last_batch_inputs = len(rows)
            self._stats.last_batch_passes = ran
        logger.debug(
            "engine %s: %d jobs, %d inputs, %d passes in %.3fs",
            self.spec.name,
            len(live),
            len(rows),
            ran,
            time.monotonic() - started,
        )

    def _run_passes(self, chunks: list[list[tuple[_Pending, int]]], idle: int) -> int:
        """Run a batch's passes, offering all but the first to the ``idle`` streams; the passes that
        succeeded. An offer no stream took by the time this thread gets to it runs here."""
        offers = [_Offer(lambda chunk=chunk: self._run_pass(chunk)) for chunk in chunks[1:]] if idle else []
        if offers:
            with self._lock:
                self._offers.extend(offers)
                self._work.notify(len(offers))
        ran = 0
        for k, chunk in enumerate(chunks):
            if k == 0 or not offers:
                ran += self._run_pass(chunk)
                continue
            offer = offers[k - 1]
            with self._lock:
                mine = offer in self._offers
                if mine:
                    self._offers.remove(offer)
            if mine:
                offer.run()
            offer.done.wait()
            ran += offer.ran
        return ran

    def _run_pass(self, chunk: list[tuple[_Pending, int]]) -> int:
        """One forward pass over ``chunk``'s live rows; the passes that succeeded.

        If a pass that mixes several jobs fails, its halves are retried (and theirs, recursively),
        so that only an input that fails alone fails, and only its own job: one client's input
        never fails its neighbours'. A pass of one job's rows fails that job as it is.
        """
        now = time.time()
        chunk = [(p, i) for p, i in chunk if not p.ticket.done and not self._dropped(p.ticket, now)]
        if not chunk:
            return 0
        try:
            outputs = self._forward([p.items[i] for p, i in chunk])
            if len(outputs) != len(chunk):
                raise RuntimeError(f"forward pass returned {len(outputs)} outputs for {len(chunk)} inputs")
        except Exception as exc:
            owners = {id(p): p for p, _ in chunk}
            if len(owners) > 1:
                logger.warning(
                    "engine %s: forward pass of %d inputs of %d jobs failed (%s); retrying its halves",
                    self.spec.name,
                    len(chunk),
                    len(owners),
                    exc,
                )
                half = len(chunk) // 2
                return self._run_pass(chunk[:half]) + self._run_pass(chunk[half:])
            (pending,) = owners.values()
            if isinstance(exc, ModelyardError):  # the model named the input it cannot take
                logger.info("engine %s: job %s refused: %s", self.spec.name, pending.ticket.job.job_id, exc)
                self._fail(pending.ticket, exc)
            else:
                logger.exception("engine %s: forward pass of %d inputs failed", self.spec.name, len(chunk))
                self._fail(pending.ticket, InternalError("the model failed to run this request"))
            return 0
        for (p, i), output in zip(chunk, outputs, strict=True):
            p.outputs[i] = output
        return 1

    def _finish(self, ticket: Ticket, result: AnyResult, *, inputs: int) -> None:
        with self._lock:
            if ticket.done:  # completing twice would count it twice
                return
            self._active -= 1
            count_outcome(self._stats, None)
            self._stats.inputs_done += inputs
        ticket.finish(result)

    def _fail(self, ticket: Ticket, error: ModelyardError) -> None:
        with self._lock:
            if ticket.done:
                return
            self._active -= 1
            count_outcome(self._stats, error)
        ticket.fail(error)
