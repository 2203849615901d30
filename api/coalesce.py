"""Coalescing concurrent embedding requests for one model into shared rq jobs.

rq costs several Redis round trips and milliseconds of worker CPU per job (../shared/design.md), as
much as embedding a short sentence. So while this process already has enough jobs of a model in
flight to keep its workers busy (``coalesce_in_flight`` per live worker), new requests wait
together, and when one of those jobs ends they go as one job (of at most ``coalesce_inputs``
inputs). Under light load every request goes at once, as its own job: coalescing adds no latency
when there is nothing to amortise.

A coalesced job is an ordinary rq job whose inputs are its requests' inputs, so the queue, the
registries and rq-dashboard show it as it is. Each request keeps its own deadline and its own
client: one that leaves stops waiting, and the job is cancelled only when all of them have left.
The coalesced job runs with a request context of its own (no record, nobody charged); each request
it served then gets the dispatcher middleware's ``after_result`` with its own context and its share
of the result, as if it had run alone (its record names the coalesced job; its client is charged
its own tokens).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from api.dispatch import Dispatcher
from api.job_run import TICK_S, JobRun
from api.middleware import RequestContext
from shared.catalog import ModelSpec
from shared.errors import Cancelled, DeadlineExceeded, InternalError, InvalidRequest, ModelyardError
from shared.jobs import EmbedJob, EmbedResult, Usage

log = logging.getLogger(__name__)

#: Failures of a coalesced job that may come from one request's input (a 400, or a model or worker
#: that failed on it): its requests then run alone, each for its own answer. Others (no live worker,
#: queue full, Redis down, deadline passed) would fail alone too, and are shared as they are.
_INPUT_FAILURES = (InvalidRequest, InternalError)


@dataclass(eq=False)
class _Member:
    """One request waiting in (or for) a coalesced job."""

    job: EmbedJob
    context: RequestContext
    wake: threading.Event = field(default_factory=threading.Event)
    result: EmbedResult | None = None
    error: ModelyardError | None = None
    #: The coalesced job that carried its inputs, once queued (its id is the response's ``X-Job-Id``).
    ran_in: EmbedJob | None = None
    #: Its job was refused as a whole: it must run on its own to get its own answer.
    alone: bool = False
    #: Its client left or its deadline passed: nobody reads its result.
    gone: bool = False

    @property
    def settled(self) -> bool:
        return self.result is not None or self.error is not None


#: A coalesced job on its way: its requests and the job's run.
_Sent = tuple[list[_Member], JobRun]


@dataclass
class _Group:
    """Requests of one model (and the same options) in this process."""

    in_flight: int = 0
    pending: list[_Member] = field(default_factory=list)


class EmbedCoalescer:
    """Runs embedding jobs, merging concurrent ones while the model's workers are busy."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        self._lock = threading.Lock()
        self._groups: dict[tuple[object, ...], _Group] = {}

    def embed(self, job: EmbedJob, spec: ModelSpec, context: RequestContext) -> tuple[str, EmbedResult]:
        """Run ``job`` alone or in a coalesced job; the id of the rq job that ran it, and its result."""
        if spec.coalesce_inputs <= 1:
            return job.job_id, self._run_alone(job, context)
        # Only requests the worker would treat alike share a job (and an owner: the job's id is
        # each request's X-Job-Id, which only its owner may look up).
        key = (job.model, job.dimensions, job.owner, job.band, job.lane)
        limit = spec.coalesce_in_flight * max(1, self._dispatcher.live_workers(job.model))
        member = _Member(job, context)
        batch: list[_Member] | None = None
        with self._lock:
            group = self._groups.setdefault(key, _Group())
            alone = group.in_flight < limit
            if alone:
                group.in_flight += 1
            else:
                group.pending.append(member)
                if _inputs(group.pending) >= spec.coalesce_inputs:
                    batch = self._take(group, spec)
                    group.in_flight += 1
        if alone:  # nothing waits behind this process's jobs: go at once, as its own job
            try:
                return job.job_id, self._run_alone(job, context)
            finally:
                self._release(key, spec)
        if batch is not None:
            self._start(key, spec, batch)
        return self._wait(member, key)

    # -- waiting requests ----------------------------------------------------------------------

    def _wait(self, member: _Member, key: tuple[object, ...]) -> tuple[str, EmbedResult]:
        while True:
            with self._lock:
                member.wake.clear()
                if member.alone or member.settled:
                    break
                remaining = member.job.deadline - time.time()
                if remaining <= 0 or member.context.client_gone():
                    self._leave(member, key)
                    if remaining <= 0:
                        raise DeadlineExceeded("the request's deadline passed before the result was ready")
                    raise Cancelled("the client went away")
            member.wake.wait(min(TICK_S, remaining))
        if member.alone:  # its coalesced job was refused: run it alone for its own answer (or error)
            return member.job.job_id, self._run_alone(member.job, member.context)
        outcome = member.error or member.result
        assert outcome is not None
        if member.ran_in is not None:  # its share, as its own run would have reported it
            self._dispatcher.middleware.after_result(member.ran_in, member.context, outcome)
        if member.error is not None:
            raise member.error
        assert member.result is not None and member.ran_in is not None
        return member.ran_in.job_id, member.result

    def _leave(self, member: _Member, key: tuple[object, ...]) -> None:
        """Forget a request nobody waits for any more (caller holds the lock)."""
        member.gone = True
        group = self._groups.get(key)
        if group is not None and member in group.pending:
            group.pending.remove(member)

    # -- running jobs ----------------------------------------------------------------------------

    def _run_alone(self, job: EmbedJob, context: RequestContext) -> EmbedResult:
        with self._dispatcher.run(job, context) as run:
            return run.wait()

    def _release(self, key: tuple[object, ...], spec: ModelSpec) -> None:
        """One of the group's jobs ended: send what waited behind it, or free its place."""
        batch = self._take_or_free(key, spec)
        if batch is not None:
            self._start(key, spec, batch)

    def _take_or_free(self, key: tuple[object, ...], spec: ModelSpec) -> list[_Member] | None:
        """The group's next batch, or None, freeing the place in flight, when nothing waits."""
        with self._lock:
            group = self._groups[key]
            if not group.pending:
                group.in_flight -= 1
                return None
            return self._take(group, spec)

    @staticmethod
    def _take(group: _Group, spec: ModelSpec) -> list[_Member]:
        """The oldest waiting requests, up to ``coalesce_inputs`` inputs (at least one request)."""
        batch, count = [], 0
        while group.pending:
            size = len(group.pending[0].job.inputs)
            if batch and count + size > spec.coalesce_inputs:
                break
            batch.append(group.pending.pop(0))
            count += size
        return batch

    def _start(self, key: tuple[object, ...], spec: ModelSpec, batch: list[_Member]) -> None:
        thread = threading.Thread(
            target=self._run_batches, args=(key, spec, batch), name="embed-coalescer", daemon=True
        )
        thread.start()

    def _run_batches(self, key: tuple[object, ...], spec: ModelSpec, batch: list[_Member]) -> None:
        """Run coalesced jobs until nothing waits behind them (a thread of its own).

        When a job ends, the next one is sent before the ended job's requests are answered: those
        answers wake a request thread each, and if the send waited its turn behind them, the
        model's worker would sit idle meanwhile.
        """
        sent = self._send(batch) or self._send_next(key, spec)
        while sent is not None:
            batch, run = sent
            try:
                with run:
                    outcome: EmbedResult | ModelyardError = run.wait()
            except ModelyardError as error:
                outcome = error
            except Exception:  # a bug here must not strand the batch's waiting requests
                log.exception("coalesced embedding job failed")
                outcome = InternalError("the coalesced job failed")
            sent = self._send_next(key, spec)
            try:
                self._answer(batch, run.job, outcome)
            except Exception:
                log.exception("answering a coalesced embedding job failed")
                self._settle(batch, error=InternalError("the coalesced job failed"))

    def _send_next(self, key: tuple[object, ...], spec: ModelSpec) -> _Sent | None:
        """Send the oldest waiting requests as the group's next job; None, freeing the group's
        place in flight, when nothing waits."""
        while (batch := self._take_or_free(key, spec)) is not None:
            sent = self._send(batch)
            if sent is not None:
                return sent
        return None

    def _send(self, batch: list[_Member]) -> _Sent | None:
        """Enqueue one job with the batch's inputs; None (the batch answered) if it was refused."""
        first = batch[0].job
        job = first.model_copy(
            update={
                "job_id": self._dispatcher.new_job_id(),
                "inputs": [item for member in batch for item in member.job.inputs],
                "deadline": max(member.job.deadline for member in batch),
            }
        )
        # Left when every one of its requests has left.
        context = RequestContext(client_gone=lambda: all(member.gone for member in batch))
        try:
            run = self._dispatcher.run(job, context)
        except ModelyardError as error:
            self._settle(batch, error=error)
        except Exception:
            log.exception("enqueueing a coalesced embedding job failed")
            self._settle(batch, error=InternalError("the coalesced job failed"))
        else:
            with self._lock:
                for member in batch:
                    member.ran_in = job
            return batch, run
        return None

    def _answer(self, batch: list[_Member], job: EmbedJob, outcome: EmbedResult | ModelyardError) -> None:
        """Give each request of the batch its share of the job's result, or the job's error."""
        if isinstance(outcome, _INPUT_FAILURES) and len(batch) > 1:
            # One request's input may have spoilt the job for all: each runs alone for its own answer.
            with self._lock:
                for member in batch:
                    member.alone = True
                    member.wake.set()
            return
        if isinstance(outcome, ModelyardError):
            self._settle(batch, error=outcome)
            return
        start = 0
        with self._lock:
            for member in batch:
                end = start + len(member.job.inputs)
                tokens = outcome.input_tokens[start:end]
                total = sum(tokens)
                member.result = EmbedResult(
                    embeddings=outcome.embeddings[start:end],
                    usage=Usage(prompt_tokens=total, total_tokens=total),
                    input_tokens=tokens,
                )
                member.wake.set()
                start = end
        log.debug("coalesced %d requests (%d inputs) into job %s", len(batch), start, job.job_id)

    def _settle(self, batch: list[_Member], *, error: ModelyardError) -> None:
        with self._lock:
            for member in batch:
                if not member.settled:
                    member.error = error
                    member.wake.set()


def _inputs(members: list[_Member]) -> int:
    return sum(len(member.job.inputs) for member in members)
