"""What the generation engine keeps of its jobs: requests, their sequences, prefill plans, the outbox.

Engine-thread state only (a :class:`RequestState` is made in the submitting thread, then handed over).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.errors import InvalidRequest, ModelyardError
from shared.events import ChoiceDelta, DeltaEvent
from shared.jobs import (
    Choice,
    Constraint,
    FinishReason,
    GenerateJob,
    GenerateResult,
    SamplingParams,
    TokenLogprob,
    Usage,
)
from shared.tools import ToolCallDelta
from workers.constraints import Matcher
from workers.engines.base import Ticket
from workers.engines.generation.constrained import Pace
from workers.engines.generation.text import Detokenizer, StopMatcher
from workers.engines.sampling import SequenceSampler
from workers.tools import ToolFormat
from workers.tools.parsing import Reader


@dataclass(eq=False)
class RequestState:
    """A job inside the engine: its ticket, prompts and choices.

    Choice ``i`` is sample ``i % n`` of prompt ``i // n``; choices start in index order, and each
    one's state (a :class:`SequenceState`) is made when it starts, so waiting choices cost nothing.
    """

    ticket: Ticket
    job: GenerateJob
    prompts: list[list[int]]
    #: Per prompt, the completion tokens each of its choices may generate (max_tokens, or what the
    #: context leaves).
    limits: list[int]
    #: Per prompt, the text an echoing choice starts with.
    echo_texts: list[str] = field(default_factory=list)
    #: Per prompt, its tokens' logprob entries (echo with logprobs), made when it is first prefilled.
    prompt_logprobs: dict[int, list[TokenLogprob]] = field(default_factory=dict)
    #: The job's grammar (its output constraint, or its tool calls') and its matcher at the start of
    #: the output, copied for each choice (None: free text).
    constraint: Constraint | None = None
    matcher: Matcher | None = None
    #: The job's tool-call format, when it offers tools: each choice's text is parsed with it.
    tool_format: ToolFormat | None = None
    #: The choices started so far, in index order.
    sequences: list[SequenceState] = field(default_factory=list)
    unfinished: int = 0
    #: Done (finished or failed): its sequences stop at the next step.
    closed: bool = False
    next_seq: int = 0

    @property
    def choices(self) -> int:
        return len(self.prompts) * self.job.n

    @property
    def unstarted(self) -> int:
        """Choices still waiting to start."""
        return self.choices - len(self.sequences)

    def cache_tokens(self, index: int) -> int:
        """KV-cache tokens choice ``index`` reserves: its prompt plus its completion limit."""
        prompt = index // self.job.n
        return len(self.prompts[prompt]) + self.limits[prompt]

    def result(self) -> GenerateResult:
        """The finished job's choices, in index order, and its usage."""
        prompt_tokens = sum(len(ids) for ids in self.prompts)
        completion_tokens = sum(seq.generated for seq in self.sequences)
        choices = [
            Choice(
                index=seq.index,
                text="".join(seq.parts),
                finish_reason=seq.finish_reason or "stop",
                logprobs=seq.logprobs,
                tool_calls=(seq.tools.calls or None) if seq.tools is not None else None,
            )
            for seq in sorted(self.sequences, key=lambda s: s.index)
        ]
        return GenerateResult(
            choices=choices,
            usage=Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            ),
        )


@dataclass(eq=False)
class SequenceState:
    """One choice being generated."""

    request: RequestState
    index: int
    prompt: int
    #: Completion tokens it may generate: max_tokens, or what the context leaves.
    limit: int
    sampler: SequenceSampler
    detokenizer: Detokenizer
    stops: StopMatcher
    generated: int = 0
    #: Taken but not yet fed to the model: the sampled token, or the run a grammar forced.
    unfed: list[int] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    #: Every token's entry (echoed prompt tokens first), when the job asked for logprobs.
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    #: This choice's own place in the job's grammar (None: free text).
    matcher: Matcher | None = None
    #: How its grammar's unforced picks go: drawn first, or masked after refused draws.
    pace: Pace = field(default_factory=Pace)
    #: The parse of its text into content and tool calls (None: no tools), and the call fragments
    #: not yet handed to the outbox.
    tools: Reader | None = None
    tool_deltas: list[ToolCallDelta] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.finish_reason is None and not self.request.closed

    @property
    def cache_tokens(self) -> int:
        """KV-cache tokens it reserves: its prompt plus its completion limit."""
        return self.request.cache_tokens(self.index)

    @property
    def params(self) -> SamplingParams:
        return self.request.job.sampling

    def feed(self) -> list[int]:
        """The tokens to feed the model next (the row's input to the coming step)."""
        tokens, self.unfed = self.unfed, []
        return tokens

    def echo(self) -> tuple[str, list[TokenLogprob]]:
        """What comes before its first token: the echoed prompt and its entries (none without echo)."""
        req = self.request
        if self.generated or not req.echo_texts:
            return "", []
        return req.echo_texts[self.prompt], req.prompt_logprobs.get(self.prompt, [])

    def advance(self, token: int, eos_token_ids: frozenset[int]) -> tuple[str, FinishReason | None]:
        """Take a sampled token: the text it releases (cut at a stop string) and how the choice ends
        (None: it goes on). Raises :class:`InvalidRequest` if the choice's grammar cannot go on."""
        params = self.params
        self.generated += 1
        self.unfed.append(token)
        finish: FinishReason | None = None
        complete = self._match(token)
        if token in params.stop_token_ids:
            # vLLM: a stop token's own text stays in the output (special tokens decode to nothing).
            finish, text = "stop", self.detokenizer.add(token) + self.detokenizer.flush()
        elif token in eos_token_ids and not params.ignore_eos:
            finish, text = "stop", self.detokenizer.flush()
        else:
            text = self.detokenizer.add(token)
            if complete or self.generated >= self.limit:
                finish = "stop" if complete else "length"
                text += self.detokenizer.flush()
        text, stopped = self.stops.feed(text)
        if stopped:
            finish = "stop"
        elif finish is not None:
            text += self.stops.flush()
        return self._parse_tools(text, finish)

    def _parse_tools(self, text: str, finish: FinishReason | None) -> tuple[str, FinishReason | None]:
        """Split off the tool calls (their fragments wait in ``tool_deltas``): the content is left.

        A choice that called tools ends with ``tool_calls``, or ``stop`` when the job named the
        function (OpenAI's reasons).
        """
        reader, use = self.tools, self.request.job.tools
        if reader is None or use is None:
            return text, finish
        content, deltas = reader.feed(text)
        self.tool_deltas += deltas
        if finish is not None:
            rest, deltas = reader.finish()
            content += rest
            self.tool_deltas += deltas
            if finish == "stop" and use.mode != "function" and reader.calls:
                finish = "tool_calls"
        return content, finish

    def _match(self, token: int) -> bool:
        """Advance the grammar, if any: whether it is now complete (only EOS could follow)."""
        matcher = self.matcher
        if matcher is None:
            return False
        if not matcher.accept(token):
            spec = self.request.constraint
            assert spec is not None  # a matcher comes from the job's constraint
            raise InvalidRequest(f"{spec.param}: the grammar cannot go on: {matcher.error}", param=spec.param)
        return matcher.done

    def finish(self, reason: FinishReason) -> bool:
        """End the choice; True when it was its job's last one."""
        self.finish_reason = reason
        self.request.unfinished -= 1
        return self.request.unfinished == 0


@dataclass
class Prefill:
    """Choices that start together: each distinct prompt is prefilled once and copied per choice."""

    #: (request, choice index), in the order their rows join the batch.
    choices: list[tuple[RequestState, int]] = field(default_factory=list)
    prompts: list[list[int]] = field(default_factory=list)
    #: Per choice, the row of its prompt in the prefill.
    rows: list[int] = field(default_factory=list)
    #: (request, prompt index) -> its row.
    prompt_rows: dict[tuple[RequestState, int], int] = field(default_factory=dict)
    _longest: int = 0

    def add(self, req: RequestState, index: int, budget: int | None) -> bool:
        """Add a choice; False, adding nothing, when its prompt would take the padded prefill past
        ``budget`` tokens (the first prompt always goes)."""
        key = (req, index // req.job.n)
        row = self.prompt_rows.get(key)
        if row is None:
            ids = req.prompts[key[1]]
            longest = max(self._longest, len(ids))
            if budget is not None and self.prompts and (len(self.prompts) + 1) * longest > budget:
                return False
            self._longest = longest
            row = self.prompt_rows[key] = len(self.prompts)
            self.prompts.append(ids)
        self.choices.append((req, index))
        self.rows.append(row)
        return True

    def by_request(self) -> list[Prefill]:
        """The same choices, one prefill per request."""
        parts: dict[RequestState, Prefill] = {}
        for req, index in self.choices:
            parts.setdefault(req, Prefill()).add(req, index, None)
        return list(parts.values())


@dataclass
class PendingDelta:
    """What one choice has to stream from an engine iteration."""

    text: str = ""
    finish_reason: FinishReason | None = None
    #: Entries of its new tokens, when the job asked for logprobs.
    logprobs: list[TokenLogprob] | None = None
    #: Fragments of its tool calls, one per call at most.
    tool_calls: list[ToolCallDelta] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.text or self.finish_reason or self.logprobs or self.tool_calls)

    def add_calls(self, deltas: list[ToolCallDelta]) -> None:
        """Take more call fragments, joining a call's arguments into one fragment."""
        for delta in deltas:
            last = self.tool_calls[-1] if self.tool_calls else None
            if last is not None and last.index == delta.index and delta.id is None:
                self.tool_calls[-1] = last.model_copy(update={"arguments": last.arguments + delta.arguments})
            else:
                self.tool_calls.append(delta)


@dataclass
class Outbox:
    """What one engine iteration has to tell the outside world, sent together at its end."""

    #: Per request, per choice index: what it streams.
    deltas: dict[RequestState, dict[int, PendingDelta]] = field(default_factory=dict)
    finished: list[RequestState] = field(default_factory=list)
    failed: list[tuple[RequestState, ModelyardError]] = field(default_factory=list)

    def reset(self) -> None:
        """Forget what was flushed."""
        self.deltas.clear()
        self.finished.clear()
        self.failed.clear()

    def add(
        self,
        seq: SequenceState,
        text: str,
        finish_reason: FinishReason | None,
        logprobs: list[TokenLogprob] | None,
    ) -> None:
        entry = self.deltas.setdefault(seq.request, {}).setdefault(seq.index, PendingDelta())
        entry.text += text
        entry.finish_reason = finish_reason or entry.finish_reason
        if logprobs is not None:
            entry.logprobs = [*(entry.logprobs or []), *logprobs]
        if seq.tool_deltas:
            entry.add_calls(seq.tool_deltas)
            seq.tool_deltas = []

    def stream_events(self) -> list[tuple[str, DeltaEvent]]:
        """One event per streaming job that has something to say, numbered in its own sequence."""
        messages = []
        for req, choices in self.deltas.items():
            if req.closed or not req.job.stream:
                continue
            deltas = [
                ChoiceDelta(
                    index=index,
                    text=d.text,
                    finish_reason=d.finish_reason,
                    logprobs=d.logprobs,
                    tool_calls=d.tool_calls or None,
                )
                for index, d in sorted(choices.items())
                if not d.empty
            ]
            if deltas:
                messages.append(
                    (
                        req.job.reply_to,
                        DeltaEvent(job_id=req.job.job_id, run=req.job.run, seq=req.next_seq, deltas=deltas),
                    )
                )
                req.next_seq += 1
        return messages
