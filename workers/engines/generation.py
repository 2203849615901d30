"""Text generation with continuous batching.

One engine thread owns the model. Between decode steps it drops finished sequences, prefills waiting
ones and joins them to the running batch, so a long generation never holds back a short one. The
model is reached through :class:`LanguageModel` (a Hugging Face model in ``workers.models.causal_lm``,
a fake in ``workers.models.fake_lm``); sampling, stop strings, detokenization and events live here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from shared.errors import (
    Cancelled,
    DeadlineExceeded,
    InternalError,
    InvalidRequest,
    ModelyardError,
    ServiceUnavailable,
)
from shared.events import ChoiceDelta, DeltaEvent
from shared.jobs import (
    ChatMessage,
    Choice,
    FinishReason,
    GenerateJob,
    GenerateResult,
    SamplingParams,
    TokenLogprob,
    Usage,
)
from shared.models import ModelSpec
from workers.engines import sampling
from workers.engines.base import AnyJob, Engine, EventSink, Ticket
from workers.engines.logprobs import TokenTexts
from workers.engines.sampling import RowLogprobs, SequenceSampler

log = logging.getLogger(__name__)

#: Running sequences per unit of ``max_batch_size`` (a job may have several choices).
RUNNING_PER_SLOT = 4
#: Prompt tokens decoded in front of a choice's first token, so its leading space comes out right.
DETOKENIZE_CONTEXT = 5
#: Seconds the idle engine thread sleeps between looks at its inbox (submit wakes it earlier).
_IDLE_WAIT_S = 1.0
#: Most alternatives per token a job may ask for (OpenAI's ``top_logprobs`` limit).
MAX_TOP_LOGPROBS = 20


class DecodeBatch(Protocol):
    """The KV caches of sequences decoded together; row ``i`` is the engine's ``i``-th running sequence."""

    def __len__(self) -> int: ...

    @property
    def joinable(self) -> bool:
        """Whether :meth:`join` may add rows while this batch has rows of its own."""
        ...

    def step(self, tokens: Sequence[int]) -> torch.Tensor:
        """Feed one token per row; returns the next-token logits, ``[rows, vocab]``."""
        ...

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only ``rows``, in that order; a repeated row gets its own copy of the cache."""
        ...

    def join(self, other: DecodeBatch) -> None:
        """Append the rows of ``other`` (a batch from the same model) after this batch's rows."""
        ...


class LanguageModel(Protocol):
    """What the engine needs from a causal language model and its tokenizer."""

    @property
    def context_length(self) -> int:
        """Most tokens (prompt plus completion) one sequence may hold."""
        ...

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Tokens that end a choice with finish reason ``stop``."""
        ...

    @property
    def vocab_size(self) -> int:
        """Token ids are ``0 .. vocab_size - 1``; the logits have this many columns."""
        ...

    def chat_prompt(self, messages: Sequence[ChatMessage]) -> list[int]:
        """Token ids of the rendered chat, ready for the assistant's turn; raises :class:`InvalidRequest`."""
        ...

    def completion_prompt(self, text: str) -> list[int]:
        """Token ids of a plain-text prompt."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` without special tokens; a cut multi-byte character comes out as U+FFFD."""
        ...

    def token_bytes(self, ids: Sequence[int]) -> list[bytes]:
        """The bytes each token stands for, for logprobs (a special token: its literal text)."""
        ...

    def prompt_logits(self, ids: Sequence[int]) -> torch.Tensor:
        """Logits ``[len(ids) - 1, vocab]`` of a prompt: row ``t`` predicts ``ids[t + 1]`` (for echo)."""
        ...

    def prefill(self, prompts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, DecodeBatch]:
        """Run the prompts; returns each one's next-token logits ``[prompts, vocab]`` and their batch."""
        ...


class _Detokenizer:
    """Incremental detokenization over a short window of recent ids (vLLM's prefix/read offsets).

    Decoding only the window keeps each step O(window); decoding a few earlier ids along with the new
    ones and keeping the difference keeps tokenizers that strip a leading space right.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], context: Sequence[int]) -> None:
        self._decode = decode
        self._ids = list(context)
        self._prefix = 0  # window start: ids decoded for context only
        self._read = len(self._ids)  # ids before this are already emitted

    def add(self, token: int) -> str:
        """Text that ``token`` completes; empty while it may end in a cut multi-byte character."""
        self._ids.append(token)
        return self._advance(final=False)

    def flush(self) -> str:
        """Whatever is held back, at the end of a choice."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        if self._read == len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        if len(new_text) <= len(prefix_text) or (new_text.endswith("\ufffd") and not final):
            return ""
        del self._ids[: self._read]  # the window moves on: what was new becomes its context
        self._prefix, self._read = 0, len(self._ids)
        return new_text[len(prefix_text) :]


class _StopMatcher:
    """Cuts a choice's text before the first stop string, across token boundaries.

    Holds back the longest suffix that could start a stop string, so no part of one is ever emitted.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Text safe to emit now, and whether a stop string ended the choice."""
        if not self._stops:
            return text, False
        pending = self._pending + text
        found = [i for i in (pending.find(s) for s in self._stops) if i >= 0]
        if found:
            self._pending = ""
            return pending[: min(found)], True
        hold = max(self._partial(pending, s) for s in self._stops)
        cut = len(pending) - hold
        self._pending = pending[cut:]
        return pending[:cut], False

    def flush(self) -> str:
        """Held-back text: the choice ended without completing a stop string."""
        text, self._pending = self._pending, ""
        return text

    @staticmethod
    def _partial(text: str, stop: str) -> int:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                return k
        return 0


@dataclass(eq=False)
class _Request:
    """A job inside the engine: its ticket, prompts and choices."""

    ticket: Ticket
    job: GenerateJob
    prompts: list[list[int]]
    #: Per prompt, the text an echoing choice starts with.
    echo_texts: list[str] = field(default_factory=list)
    #: Per prompt, its tokens' logprob entries (echo with logprobs), made when it is first prefilled.
    prompt_logprobs: dict[int, list[TokenLogprob]] = field(default_factory=dict)
    sequences: list[_Sequence] = field(default_factory=list)
    unfinished: int = 0
    #: Done (finished or failed): its sequences stop at the next step.
    closed: bool = False
    next_seq: int = 0


@dataclass(eq=False)
class _Sequence:
    """One choice being generated."""

    request: _Request
    index: int
    prompt: int
    #: Completion tokens it may generate: max_tokens, or what the context leaves.
    limit: int
    sampler: SequenceSampler
    detokenizer: _Detokenizer
    stops: _StopMatcher
    generated: int = 0
    #: Sampled but not yet fed to the model.
    last_token: int = -1
    parts: list[str] = field(default_factory=list)
    #: Every token's entry (echoed prompt tokens first), when the job asked for logprobs.
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None

    @property
    def alive(self) -> bool:
        return self.finish_reason is None and not self.request.closed

    @property
    def cache_tokens(self) -> int:
        """KV-cache tokens it reserves: its prompt plus its completion limit."""
        return len(self.request.prompts[self.prompt]) + self.limit

    @property
    def params(self) -> SamplingParams:
        return self.request.job.sampling


@dataclass
class _Outbox:
    """What one engine iteration has to tell the outside world, sent together at its end."""

    #: Per request, per choice index: [text, finish reason, logprob entries or None].
    deltas: dict[_Request, dict[int, list[Any]]] = field(default_factory=dict)
    finished: list[_Request] = field(default_factory=list)
    failed: list[tuple[_Request, ModelyardError]] = field(default_factory=list)

    def reset(self) -> None:
        """Forget what was flushed."""
        self.deltas.clear()
        self.finished.clear()
        self.failed.clear()

    def add(
        self,
        seq: _Sequence,
        text: str,
        finish_reason: FinishReason | None,
        logprobs: list[TokenLogprob] | None,
    ) -> None:
        entry = self.deltas.setdefault(seq.request, {}).setdefault(seq.index, ["", None, None])
        entry[0] += text
        entry[1] = finish_reason or entry[1]
        if logprobs is not None:
            entry[2] = [*(entry[2] or []), *logprobs]


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
        self._inbox: deque[_Request] = deque()
        self._active = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        # Engine-thread state.
        self._requests: list[_Request] = []
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._batch: DecodeBatch | None = None
        self._token_texts = TokenTexts(lm.token_bytes)
        self._stats = {
            "max_running_seen": 0,
            "steps": 0,
            "prefills": 0,
            "last_batch_size": 0,
            "tokens_generated": 0,
            "jobs_done": 0,
            "jobs_failed": 0,
            "jobs_cancelled": 0,
            "jobs_expired": 0,
            "busy_ms": 0,
        }

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
        error = ServiceUnavailable(f"model {self._spec.name!r} is shutting down")
        with self._lock:
            requests = [*self._requests, *self._inbox]
            self._requests, self._inbox = [], deque()
        self._waiting.clear()
        self._running, self._batch = [], None
        for req in requests:
            if not req.closed:
                req.closed = True
                self._complete(req, error)

    def submit(self, job: AnyJob, cancel: threading.Event) -> Ticket:
        """Tokenize ``job`` here, in the caller's thread, and queue it; raises :class:`InvalidRequest`."""
        if not isinstance(job, GenerateJob):
            raise InvalidRequest(f"model {self._spec.name!r} only generates text", param="model")
        req = self._new_request(job, cancel)
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

    def stats(self) -> dict[str, int]:
        """Counters for tests and status: ``running`` sequences now, ``waiting`` ones, and totals."""
        return {
            **self._stats,
            "running": len(self._running),
            "waiting": len(self._waiting),
            "active": self._active,
            "cache_tokens_reserved": self._reserved_tokens(),
        }

    def _reserved_tokens(self) -> int:
        return sum(seq.cache_tokens for seq in self._running)

    # -- submit helpers (caller's thread) -----------------------------------------------------------

    def _new_request(self, job: GenerateJob, cancel: threading.Event) -> _Request:
        sampling = job.sampling
        if job.n < 1:
            raise InvalidRequest("n must be at least 1", param="n")
        if sampling.max_tokens is not None and sampling.max_tokens < 1:
            raise InvalidRequest("max_tokens must be at least 1", param="max_tokens")
        if sampling.temperature < 0:
            raise InvalidRequest("temperature must not be negative", param="temperature")
        if not 0 <= sampling.top_p <= 1:
            raise InvalidRequest("top_p must be between 0 and 1", param="top_p")
        self._check_sampling(sampling)
        prompts, param = self._encode(job)
        context = self._lm.context_length
        for ids in prompts:
            if not ids:
                raise InvalidRequest("the prompt is empty", param=param)
            if len(ids) >= context:
                raise InvalidRequest(
                    f"This model's maximum context length is {context} tokens, but the {param} "
                    f"resulted in {len(ids)} tokens, leaving no room for a completion. "
                    f"Please reduce the length of the {param}.",
                    param=param,
                    code="context_length_exceeded",
                )
        req = _Request(ticket=Ticket(job, cancel), job=job, prompts=prompts)
        if job.echo and job.prompts is not None:
            # A text prompt echoes as sent; token ids echo as their text.
            req.echo_texts = [p if isinstance(p, str) else self._lm.decode(p) for p in job.prompts]
        for p, ids in enumerate(prompts):
            room = context - len(ids)
            limit = room if sampling.max_tokens is None else min(sampling.max_tokens, room)
            for j in range(job.n):
                req.sequences.append(
                    _Sequence(
                        request=req,
                        index=p * job.n + j,
                        prompt=p,
                        limit=limit,
                        # Seeded by the sample's place among its prompt's n, so a prompt's text
                        # does not depend on the other prompts of the job.
                        sampler=SequenceSampler(
                            sampling, ids, None if sampling.seed is None else sampling.seed + j
                        ),
                        detokenizer=_Detokenizer(self._lm.decode, ids[-DETOKENIZE_CONTEXT:]),
                        stops=_StopMatcher(sampling.stop),
                        logprobs=None if sampling.logprobs is None else [],
                    )
                )
        req.unfinished = len(req.sequences)
        return req

    def _check_sampling(self, sampling: SamplingParams) -> None:
        """Refuse values the API would have refused too (jobs may come from elsewhere)."""
        vocab = self._lm.vocab_size
        if sampling.top_k < 0:
            raise InvalidRequest("top_k must be 0 (off) or positive", param="top_k")
        if not 0 <= sampling.min_p <= 1:
            raise InvalidRequest("min_p must be between 0 and 1", param="min_p")
        if sampling.repetition_penalty <= 0:
            raise InvalidRequest("repetition_penalty must be positive", param="repetition_penalty")
        if sampling.logprobs is not None and not 0 <= sampling.logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidRequest(f"logprobs must be between 0 and {MAX_TOP_LOGPROBS}", param="top_logprobs")
        for token_id in sampling.logit_bias:
            if not 0 <= token_id < vocab:
                raise InvalidRequest(
                    f"logit_bias names token {token_id}, outside this model's vocabulary of {vocab}",
                    param="logit_bias",
                )

    def _encode(self, job: GenerateJob) -> tuple[list[list[int]], str]:
        if job.messages is not None and job.prompts is None:
            if not job.messages:
                raise InvalidRequest("messages must not be empty", param="messages")
            return [self._lm.chat_prompt(job.messages)], "messages"
        if job.prompts is not None and job.messages is None:
            if not job.prompts:
                raise InvalidRequest("prompt must not be empty", param="prompt")
            return [self._prompt_ids(prompt) for prompt in job.prompts], "prompt"
        raise InvalidRequest("a generation job needs either messages or prompts", param="messages")

    def _prompt_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self._lm.completion_prompt(prompt)
        vocab = self._lm.vocab_size
        for token_id in prompt:
            if not 0 <= token_id < vocab:
                raise InvalidRequest(
                    f"prompt token {token_id} is outside this model's vocabulary of {vocab}", param="prompt"
                )
        return list(prompt)

    # -- engine thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                while not (self._stopping or self._inbox or self._waiting or self._running):
                    self._wakeup.wait(_IDLE_WAIT_S)
                if self._stopping:
                    return
                new, self._inbox = list(self._inbox), deque()
                self._requests.extend(new)
            began = time.perf_counter()
            for req in new:
                self._waiting.extend(req.sequences)
            out = _Outbox()
            try:
                self._iterate(out)
            except Exception:
                # A bug here must not kill the thread; the state may be inconsistent, so start afresh.
                log.exception("generation engine iteration failed")
                for req in self._requests:
                    self._close(req, InternalError("the generation engine failed"), out)
                self._waiting.clear()
                self._batch, self._running = None, []
            self._flush(out)
            self._stats["busy_ms"] += round((time.perf_counter() - began) * 1000)

    def _iterate(self, out: _Outbox) -> None:
        self._expire(out)
        self._drop_finished()
        self._admit(out)
        if self._running:
            if out.deltas:  # newcomers' first tokens go out now, not after the next decode step
                self._flush(out)
                out.reset()
            self._decode(out)
        self._drop_finished()

    def _expire(self, out: _Outbox) -> None:
        """Stop cancelled jobs and jobs past their deadline, waiting or running."""
        now = time.time()
        for req in self._requests:
            if req.closed:
                continue
            if req.ticket.cancel.is_set():
                self._close(req, Cancelled("the job was cancelled"), out)
            elif now >= req.job.deadline:
                self._close(req, DeadlineExceeded("the request's deadline passed during generation"), out)

    def _admit(self, out: _Outbox) -> None:
        """Prefill waiting sequences that fit and join them to the running batch."""
        if not self._waiting or (self._batch is not None and not self._batch.joinable):
            return  # nothing waits, or this model's cache cannot merge: newcomers wait for an empty batch
        chosen: list[_Sequence] = []
        rows: list[int] = []
        prompts: list[list[int]] = []
        prompt_row: dict[tuple[_Request, int], int] = {}
        room = self._max_running - len(self._running)
        # KV-cache tokens left under the budget (None: no budget); summed only when there is one.
        free = None if self._cache_tokens is None else self._cache_tokens - self._reserved_tokens()
        longest = 0
        while self._waiting and len(chosen) < room:
            seq = self._waiting[0]
            if not seq.alive:
                self._waiting.popleft()
                continue
            # FIFO: a head that does not fit the cache budget waits, and so does everyone behind it;
            # the first sequence of an empty batch always goes.
            if free is not None:
                if seq.cache_tokens > free and (self._running or chosen):
                    break
                free -= seq.cache_tokens
            key = (seq.request, seq.prompt)
            if key not in prompt_row:
                ids = seq.request.prompts[seq.prompt]
                padded = (len(prompts) + 1) * max(longest, len(ids))
                if prompts and padded > self._prefill_tokens:
                    break
                longest = max(longest, len(ids))
                prompt_row[key] = len(prompts)
                prompts.append(ids)
            rows.append(prompt_row[key])
            chosen.append(self._waiting.popleft())
        if not chosen:
            return
        try:
            logits, batch = self._lm.prefill(prompts)
            if rows != list(range(len(prompts))):  # n > 1: one prefill per prompt, copied per choice
                batch.keep(rows)
                logits = logits[torch.tensor(rows, device=logits.device)]
            picks = self._pick(logits, chosen)
            self._score_prompts(prompt_row)
        except Exception:
            log.exception("prefill of %d prompts failed", len(prompts))
            for req in {seq.request: None for seq in chosen}:
                self._close(req, InternalError("the model failed to process the prompt"), out)
            return
        self._stats["prefills"] += 1
        for seq, (token, logprob) in zip(chosen, picks, strict=True):
            self._accept(seq, token, logprob, out)
        keep = [i for i, seq in enumerate(chosen) if seq.alive]
        if not keep:
            return
        if len(keep) < len(chosen):
            batch.keep(keep)
            chosen = [chosen[i] for i in keep]
        if self._batch is None:
            self._batch, self._running = batch, chosen
        else:
            self._batch.join(batch)
            self._running.extend(chosen)
        self._stats["max_running_seen"] = max(self._stats["max_running_seen"], len(self._running))

    def _decode(self, out: _Outbox) -> None:
        """One decode step for every running sequence."""
        assert self._batch is not None
        seqs = self._running
        try:
            logits = self._batch.step([seq.last_token for seq in seqs])
            picks = self._pick(logits, seqs)
        except Exception:
            log.exception("decode step of %d sequences failed", len(seqs))
            self._fail_running(out, "the model failed during generation")
            return
        self._stats["steps"] += 1
        self._stats["last_batch_size"] = len(seqs)
        for seq, (token, logprob) in zip(seqs, picks, strict=True):
            self._accept(seq, token, logprob, out)

    def _pick(self, logits: torch.Tensor, seqs: Sequence[_Sequence]) -> list[tuple[int, RowLogprobs | None]]:
        """Each row's next token, and its logprobs when its job asked for them."""
        samplers = [seq.sampler for seq in seqs]
        processed = sampling.process(logits, samplers)
        tokens = sampling.sample(processed, samplers)
        logprobs = sampling.logprobs(processed, samplers, tokens)
        sampling.record(samplers, tokens)
        return list(zip(tokens, logprobs, strict=True))

    def _score_prompts(self, prompts: dict[tuple[_Request, int], int]) -> None:
        """Logprob entries of the prompts just prefilled whose jobs echo them with logprobs."""
        for req, p in prompts:
            k = req.job.sampling.logprobs
            if not req.job.echo or k is None or p in req.prompt_logprobs:
                continue
            ids = req.prompts[p]
            rows = sampling.prompt_logprobs(self._lm.prompt_logits(ids), ids, k) if len(ids) > 1 else []
            req.prompt_logprobs[p] = self._token_texts.prompt(ids, rows)

    def _accept(self, seq: _Sequence, token: int, logprob: RowLogprobs | None, out: _Outbox) -> None:
        """Record a sampled token: detokenize, match stop strings, decide whether the choice ends."""
        if not seq.alive:
            return
        req, params = seq.request, seq.params
        echo, echo_logprobs = "", []
        if seq.generated == 0 and req.echo_texts:  # the echoed prompt comes before the first token
            echo, echo_logprobs = req.echo_texts[seq.prompt], req.prompt_logprobs.get(seq.prompt, [])
        seq.generated += 1
        self._stats["tokens_generated"] += 1
        seq.last_token = token
        finish: FinishReason | None = None
        if token in params.stop_token_ids:
            # vLLM: a stop token's own text stays in the output (special tokens decode to nothing).
            finish, text = "stop", seq.detokenizer.add(token) + seq.detokenizer.flush()
        elif token in self._lm.eos_token_ids and not params.ignore_eos:
            finish, text = "stop", seq.detokenizer.flush()
        else:
            text = seq.detokenizer.add(token)
            if seq.generated >= seq.limit:
                finish, text = "length", text + seq.detokenizer.flush()
        text, stopped = seq.stops.feed(text)
        if stopped:
            finish = "stop"
        elif finish is not None:
            text += seq.stops.flush()
        text = echo + text  # stop strings apply to generated text only
        entries = None
        if seq.logprobs is not None:
            entries = [*echo_logprobs, self._token_texts.entry(token, logprob)]
            seq.logprobs.extend(entries)
        seq.parts.append(text)
        out.add(seq, text, finish, entries)
        if finish is not None:
            seq.finish_reason = finish
            seq.request.unfinished -= 1
            if seq.request.unfinished == 0:
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

    def _fail_running(self, out: _Outbox, message: str) -> None:
        for req in {seq.request: None for seq in self._running}:
            self._close(req, InternalError(message), out)
        self._batch, self._running = None, []

    def _close(self, req: _Request, error: ModelyardError, out: _Outbox) -> None:
        if not req.closed:
            req.closed = True
            out.failed.append((req, error))

    def _flush(self, out: _Outbox) -> None:
        """Publish this step's deltas in one call, then complete the tickets that ended."""
        messages = []
        for req, choices in out.deltas.items():
            if req.closed or not req.job.stream:
                continue
            deltas = [
                ChoiceDelta(index=index, text=text, finish_reason=reason, logprobs=logprobs)
                for index, (text, reason, logprobs) in sorted(choices.items())
                if text or reason or logprobs
            ]
            if deltas:
                messages.append(
                    (req.job.reply_to, DeltaEvent(job_id=req.job.job_id, seq=req.next_seq, deltas=deltas))
                )
                req.next_seq += 1
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

    def _complete(self, req: _Request, error: ModelyardError | None) -> None:
        self._stats[_outcome_counter(error)] += 1
        if error is None:
            req.ticket.finish(_result(req))
        else:
            req.ticket.fail(error)
        with self._lock:
            self._active -= 1


def _outcome_counter(error: ModelyardError | None) -> str:
    """The stats counter a job ending with ``error`` (None: success) adds to."""
    if error is None:
        return "jobs_done"
    if isinstance(error, Cancelled):
        return "jobs_cancelled"
    return "jobs_expired" if isinstance(error, DeadlineExceeded) else "jobs_failed"


def _result(req: _Request) -> GenerateResult:
    prompt_tokens = sum(len(ids) for ids in req.prompts)
    completion_tokens = sum(seq.generated for seq in req.sequences)
    choices = [
        Choice(
            index=seq.index,
            text="".join(seq.parts),
            finish_reason=seq.finish_reason or "stop",
            logprobs=seq.logprobs,
        )
        for seq in sorted(req.sequences, key=lambda s: s.index)
    ]
    return GenerateResult(
        choices=choices,
        usage=Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        ),
    )
