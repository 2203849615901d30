"""The generation engine: chat and completion jobs of one causal LM, continuously batched.

One engine thread owns the model. Between decode steps it drops finished sequences, prefills waiting
ones and joins them to the running batch, so a long generation never holds back a short one. Which
waiting choices start is ``admission``'s rule; jobs are checked and tokenized in ``prepare``, kept in
``state``, and their text is made in ``text``; the model is reached through ``model.LanguageModel``.
Rows with a grammar (structured output) get tokens their grammar allows through ``constrained``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque

import torch

from shared.catalog import ModelSpec
from shared.errors import (
    Cancelled,
    DeadlineExceeded,
    InternalError,
    InvalidRequest,
    ModelyardError,
    ServiceUnavailable,
)
from shared.jobs import AnyJob, GenerateJob
from shared.status import GenerationStats, ModelCard
from workers.engines import admission, sampling
from workers.engines.base import Engine, EventSink, Ticket, count_outcome
from workers.engines.generation.constrained import Constraints
from workers.engines.generation.model import DecodeBatch, LanguageModel
from workers.engines.generation.prepare import new_request, start_sequence
from workers.engines.generation.state import Outbox, Prefill, RequestState, SequenceState
from workers.engines.logprobs import TokenTexts
from workers.engines.sampling import RowLogprobs

log = logging.getLogger(__name__)

#: Running sequences per unit of ``max_batch_size`` (a job may have several choices).
RUNNING_PER_SLOT = 4
#: Seconds the idle engine thread sleeps between looks at its inbox (submit wakes it earlier).
_IDLE_WAIT_S = 1.0

#: A row's next tokens (the sampled one, or a run its grammar forces) and the first one's logprobs
#: (None unless the job asked for them).
_Pick = tuple[list[int], RowLogprobs | None]


class GenerationEngine(Engine):
    """Chat and completion jobs of one causal LM, continuously batched on one thread."""

    def __init__(self, lm: LanguageModel, spec: ModelSpec, sink: EventSink) -> None:
        self._lm = lm
        self._spec = spec
        self._sink = sink
        self._max_running = RUNNING_PER_SLOT * spec.max_batch_size
        #: Padded prompt tokens in one prefill (one prompt always goes, however long).
        self._prefill_tokens = spec.max_batch_tokens
        #: KV-cache tokens the running sequences may reserve together (None: no budget).
        self._cache_tokens = spec.max_cache_tokens
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._inbox: deque[RequestState] = deque()
        self._active = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        # Engine-thread state.
        #: Jobs in the engine, in arrival order, until they are done.
        self._requests: list[RequestState] = []
        self._running: list[SequenceState] = []
        self._batch: DecodeBatch | None = None
        self._token_texts = TokenTexts(lm.token_bytes)
        self._constraints = Constraints(lm)
        #: Counters the engine thread keeps; :meth:`stats` adds the gauges read from its state.
        self._stats = GenerationStats()

    # -- Engine API (any thread) ------------------------------------------------------------------

    def start(self) -> None:
        """Start the engine thread."""
        if self._thread is not None:
            raise RuntimeError("engine already started")
        self._thread = threading.Thread(target=self._run, name=f"generate-{self._spec.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Fail pending and running jobs and join the engine thread."""
        with self._lock:
            self._stopping = True
            self._wakeup.notify_all()
        if self._thread is not None:
            self._thread.join()
        self._constraints.close()
        error = ServiceUnavailable(f"model {self._spec.name!r} is shutting down")
        with self._lock:
            requests = [*self._requests, *self._inbox]
            self._requests, self._inbox = [], deque()
        self._running, self._batch = [], None
        for req in requests:
            if not req.closed:
                req.closed = True
                self._complete(req, error)

    def submit(self, job: AnyJob, cancel: threading.Event) -> Ticket:
        """Tokenize ``job`` here, in the caller's thread, and queue it; raises :class:`InvalidRequest`."""
        if not isinstance(job, GenerateJob):
            raise InvalidRequest(f"model {self._spec.name!r} only generates text", param="model")
        req = new_request(job, cancel, self._lm, self._spec, self._constraints.compile)
        with self._lock:
            if self._stopping:
                req.ticket.fail(ServiceUnavailable(f"model {self._spec.name!r} is shutting down"))
                return req.ticket
            self._inbox.append(req)
            self._active += 1
            self._wakeup.notify()
        return req.ticket

    @property
    def active(self) -> int:
        """Jobs submitted and not yet done."""
        return self._active

    def card(self) -> ModelCard:
        """Whether the model takes tools, and the format its calls are parsed in."""
        fmt = self._lm.tool_format
        return ModelCard(tool_parser=None if fmt is None else fmt.name)

    def stats(self) -> GenerationStats:
        """Counters for tests and status: ``running`` sequences now, ``waiting`` ones, and totals."""
        return self._stats.model_copy(
            update={
                "running": len(self._running),
                "waiting": sum(req.unstarted for req in list(self._requests) if not req.closed),
                "active": self._active,
                "cache_tokens_reserved": self._reserved_tokens(),
            }
        )

    def _reserved_tokens(self) -> int:
        return sum(seq.cache_tokens for seq in self._running)

    # -- engine thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                # A job in the engine has choices running or waiting (done ones leave at the flush).
                while not (self._stopping or self._inbox or self._requests):
                    self._wakeup.wait(_IDLE_WAIT_S)
                if self._stopping:
                    return
                self._requests.extend(self._inbox)
                self._inbox = deque()
            began = time.perf_counter()
            out = Outbox()
            try:
                self._iterate(out)
            except Exception:
                # A bug here must not kill the thread; the state may be inconsistent, so start afresh.
                log.exception("generation engine iteration failed")
                for req in self._requests:
                    self._close(req, InternalError("the generation engine failed"), out)
                self._batch, self._running = None, []
            self._flush(out)
            self._stats.busy_ms += round((time.perf_counter() - began) * 1000)

    def _iterate(self, out: Outbox) -> None:
        self._expire(out)
        self._drop_finished()
        self._admit(out)
        if self._running:
            if out.deltas:  # newcomers' first tokens go out now, not after the next decode step
                self._flush(out)
                out.reset()
            self._decode(out)
        self._drop_finished()

    def _expire(self, out: Outbox) -> None:
        """Stop cancelled jobs and jobs past their deadline, waiting or running."""
        now = time.time()
        for req in self._requests:
            if req.closed:
                continue
            if req.ticket.cancel.is_set():
                self._close(req, Cancelled("the job was cancelled"), out)
            elif now >= req.job.deadline:
                self._close(req, DeadlineExceeded("the request's deadline passed during generation"), out)

    def _admit(self, out: Outbox) -> None:
        """Start waiting choices that fit, fairly across jobs (see ``admission``), in one prefill."""
        if self._batch is not None and not self._batch.joinable:
            return  # this model's cache cannot merge: newcomers wait for an empty batch
        waiting = [(req, req.unstarted) for req in self._requests if req.unstarted and not req.closed]
        if not waiting:
            return
        live = sum(not req.closed for req in self._requests)
        room = admission.usable_rows(self._max_running, self._spec.max_batch_size, live) - len(self._running)
        if room <= 0:
            return
        # KV-cache tokens left under the budget (None: no budget); summed only when there is one.
        free = None if self._cache_tokens is None else self._cache_tokens - self._reserved_tokens()
        plan = Prefill()
        taken: Counter[RequestState] = Counter()
        for req in admission.fair_order(waiting, Counter(seq.request for seq in self._running)):
            index = len(req.sequences) + taken[req]
            cost = req.cache_tokens(index)
            # A choice that does not fit the cache budget waits and nobody overtakes it (a long one
            # would starve behind short ones); the first choice of an empty batch always goes.
            if free is not None and cost > free and (self._running or plan.choices):
                break
            if not plan.add(req, index, self._prefill_tokens):
                break
            taken[req] += 1
            if free is not None:
                free -= cost
            if len(plan.choices) == room:
                break
        if plan.choices:
            self._start(plan, out)

    def _start(self, plan: Prefill, out: Outbox) -> None:
        """Prefill ``plan`` and join it to the batch.

        If a prefill shared by several jobs fails, each job is prefilled alone, and only the jobs
        whose own prefill fails are failed: one job's input cannot fail its neighbours'.
        """
        try:
            prefilled = self._prefill(plan)
        except Exception:
            parts = plan.by_request()
            log.exception("prefill of %d prompts of %d jobs failed", len(plan.prompts), len(parts))
        else:
            self._join(*prefilled, out)
            return
        if len(parts) == 1:  # that job's own prefill: nothing to retry
            self._close(plan.choices[0][0], InternalError("the model failed to process the prompt"), out)
            return
        for part in parts:
            if self._batch is not None and not self._batch.joinable:
                return  # the rest has not started: it waits for an empty batch and is retried then
            req = part.choices[0][0]
            try:
                prefilled = self._prefill(part)
            except Exception:
                log.exception("prefill of job %s failed on its own", req.job.job_id)
                self._close(req, InternalError("the model failed to process the prompt"), out)
                continue
            self._join(*prefilled, out)

    def _prefill(self, plan: Prefill) -> tuple[list[SequenceState], DecodeBatch, list[_Pick]]:
        """Run the model and sampling on ``plan``: its new sequences, their batch and first tokens.

        Changes no state of the engine or of a job (the sequences are new), so it can be retried.
        """
        seqs = [start_sequence(req, index, self._lm) for req, index in plan.choices]
        masks = self._constraints.start(seqs)  # worked on during the forward pass
        logits, batch = self._lm.prefill(plan.prompts)
        if plan.rows != list(range(len(plan.prompts))):  # n > 1: one prefill per prompt, copied per choice
            batch.keep(plan.rows)
            logits = logits[torch.tensor(plan.rows, device=logits.device)]
        picks = self._constraints.pick(logits, seqs, masks, runs=batch.multi_token)
        self._score_prompts(plan.prompt_rows)
        return seqs, batch, picks

    def _join(
        self,
        seqs: list[SequenceState],
        batch: DecodeBatch,
        picks: list[_Pick],
        out: Outbox,
    ) -> None:
        """The prefilled sequences start: their first tokens are taken, the unfinished join the batch."""
        self._stats.prefills += 1
        for seq, (tokens, logprob) in zip(seqs, picks, strict=True):
            seq.request.sequences.append(seq)
            self._accept(seq, tokens, logprob, out)
        keep = [i for i, seq in enumerate(seqs) if seq.alive]
        if not keep:
            return
        if len(keep) < len(seqs):
            batch.keep(keep)
            seqs = [seqs[i] for i in keep]
        if self._batch is None:
            self._batch, self._running = batch, seqs
        else:
            self._batch.join(batch)
            self._running.extend(seqs)
        self._stats.max_running_seen = max(self._stats.max_running_seen, len(self._running))

    def _decode(self, out: Outbox) -> None:
        """One decode step for every running sequence.

        A failed step fails every job with a sequence in it, and only those (jobs still waiting start
        in a fresh batch). It is not retried row by row as a prefill is: the batch's KV cache may be
        half written, and the step's inputs are tokens the model sampled, not a client's (a client's
        input reaches the model in its prefill, where a failure is pinned on its job).
        """
        assert self._batch is not None
        seqs = self._running
        try:
            masks = self._constraints.start(seqs)  # worked on during the step
            logits = self._batch.step([seq.feed() for seq in seqs])
            picks = self._constraints.pick(logits, seqs, masks, runs=self._batch.multi_token)
        except Exception:
            log.exception("decode step of %d sequences failed", len(seqs))
            self._fail_running(out, "the model failed during generation")
            return
        self._stats.steps += 1
        self._stats.last_batch_size = len(seqs)
        for seq, (tokens, logprob) in zip(seqs, picks, strict=True):
            self._accept(seq, tokens, logprob, out)

    def _score_prompts(self, prompts: dict[tuple[RequestState, int], int]) -> None:
        """Logprob entries of the prompts just prefilled whose jobs echo them with logprobs."""
        for req, p in prompts:
            k = req.job.sampling.logprobs
            if not req.job.echo or k is None or p in req.prompt_logprobs:
                continue
            ids = req.prompts[p]
            rows = sampling.prompt_logprobs(self._lm.prompt_logits(ids), ids, k) if len(ids) > 1 else []
            req.prompt_logprobs[p] = self._token_texts.prompt(ids, rows)

    def _accept(
        self, seq: SequenceState, tokens: list[int], logprob: RowLogprobs | None, out: Outbox
    ) -> None:
        """Record a row's picked tokens, up to where its choice ends (``logprob`` is the first's)."""
        for k, token in enumerate(tokens):
            if not seq.alive:
                return
            # A run of several is a grammar's forced tokens, given only to rows without logprobs.
            self._accept_token(seq, token, logprob if k == 0 else None, out)
            self._stats.tokens_forced += k > 0

    def _accept_token(self, seq: SequenceState, token: int, logprob: RowLogprobs | None, out: Outbox) -> None:
        """Record one token: its text and logprobs go to the outbox, and the choice may end."""
        echo, echo_logprobs = seq.echo()  # the echoed prompt comes before the first token
        try:
            text, finish = seq.advance(token, self._lm.eos_token_ids)
        except InvalidRequest as error:  # its grammar cannot go on
            self._close(seq.request, error, out)
            return
        self._stats.tokens_generated += 1
        text = echo + text  # stop strings apply to generated text only
        entries = None
        if seq.logprobs is not None:
            entries = [*echo_logprobs, self._token_texts.entry(token, logprob)]
            seq.logprobs.extend(entries)
        seq.parts.append(text)
        out.add(seq, text, finish, entries)
        if finish is not None and seq.finish(finish):
            out.finished.append(seq.request)

    def _drop_finished(self) -> None:
        """Take finished and failed sequences out of the batch, at once."""
        keep = [i for i, seq in enumerate(self._running) if seq.alive]
        if len(keep) == len(self._running):
            return
        if not keep:
            self._batch, self._running = None, []
            return
        assert self._batch is not None
        self._batch.keep(keep)
        self._running = [self._running[i] for i in keep]

    def _fail_running(self, out: Outbox, message: str) -> None:
        for req in {seq.request: None for seq in self._running}:
            self._close(req, InternalError(message), out)
        self._batch, self._running = None, []

    def _close(self, req: RequestState, error: ModelyardError, out: Outbox) -> None:
        if not req.closed:
            req.closed = True
            out.failed.append((req, error))

    def _flush(self, out: Outbox) -> None:
        """Publish this step's deltas in one call, then complete the tickets that ended."""
        messages = out.stream_events()
        if messages:
            try:
                self._sink.publish(messages)
            except Exception:
                # A stream with a hole is worse than a failed one: fail the jobs that lost deltas.
                log.exception("publishing %d stream events failed", len(messages))
                lost = {event.job_id for _, event in messages}
                for req in out.deltas:
                    if req.job.job_id in lost:
                        self._close(req, InternalError("the worker failed to publish stream events"), out)
        for req in out.finished:
            if not req.closed:
                req.closed = True
                self._complete(req, None)
        for req, error in out.failed:
            self._complete(req, error)
        if out.finished or out.failed:
            self._requests = [req for req in self._requests if not req.closed]

    def _complete(self, req: RequestState, error: ModelyardError | None) -> None:
        count_outcome(self._stats, error)
        if error is None:
            req.ticket.finish(req.result())
        else:
            req.ticket.fail(error)
        with self._lock:
            self._active -= 1
