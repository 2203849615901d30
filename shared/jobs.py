"""Job payloads (API -> worker, through rq) and job results (worker -> API).

A job is one client request with all its inputs: one rq round trip per request, not per input.
Only JSON crosses Redis; :func:`decode_job` validates what a worker takes off a queue.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from shared.priority import DEFAULT_BAND, LANES_PER_BAND, Band
from shared.tools import ToolCall, ToolUse

#: ``tool_calls``: the choice ended after calling tools (``stop`` when ``tool_choice`` named the function).
FinishReason = Literal["stop", "length", "cancelled", "tool_calls"]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: Largest token id a job may name (the API refuses larger ones as it parses them).
TOKEN_ID_MAX = 2**31 - 1
#: Seeds are 64-bit signed integers, as torch and OpenAI take them.
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
#: Most ``logit_bias`` entries, stop strings and stop token ids one job may carry.
MAX_LOGIT_BIAS = 1024
MAX_STOP = 16
MAX_STOP_TOKEN_IDS = 64
#: Most alternatives per token a job may ask for (OpenAI's ``top_logprobs`` limit).
MAX_TOP_LOGPROBS = 20

# The range of each sampling parameter, defined once: SamplingParams validates with these, and the
# API's request schemas (api/schemas/generation.py) declare their fields with them, so a job the
# API would refuse is refused by the worker too, with the same words.
TokenId = Annotated[int, Field(ge=0, le=TOKEN_ID_MAX)]
MaxTokens = Annotated[int, Field(ge=1, le=1_000_000)]
Temperature = Annotated[float, Field(ge=0, le=2)]
Probability = Annotated[float, Field(ge=0, le=1)]
Seed = Annotated[int, Field(ge=SEED_MIN, le=SEED_MAX)]
TopK = Annotated[int, Field(ge=0)]
RepetitionPenalty = Annotated[float, Field(gt=0, le=100)]
Penalty = Annotated[float, Field(ge=-2, le=2)]
LogitBiasValue = Annotated[float, Field(ge=-100, le=100)]
StopStrings = Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=MAX_STOP)]
StopTokenIds = Annotated[list[TokenId], Field(max_length=MAX_STOP_TOKEN_IDS)]
TopLogprobs = Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)]


class SamplingParams(_Wire):
    """How to pick tokens; OpenAI semantics. Each field's range is checked as the job is built or decoded."""

    #: Completion tokens per choice; None means whatever the context length leaves.
    max_tokens: MaxTokens | None = None
    temperature: Temperature = 1.0
    top_p: Probability = 1.0
    #: Strings that end a choice; they are not part of its text.
    stop: StopStrings = Field(default_factory=list)
    seed: Seed | None = None
    #: Keep the ``top_k`` most likely tokens; 0 keeps all.
    top_k: TopK = 0
    #: Drop tokens less likely than ``min_p`` times the most likely one.
    min_p: Probability = 0.0
    #: HF/vLLM: divide positive logits (multiply negative ones) of tokens in the prompt or output.
    repetition_penalty: RepetitionPenalty = 1.0
    #: OpenAI: subtract once from the logit of every token already generated.
    presence_penalty: Penalty = 0.0
    #: OpenAI: subtract per occurrence from the logit of every token already generated.
    frequency_penalty: Penalty = 0.0
    #: Added to the logits of these token ids before sampling (ids within the vocabulary: the
    #: engine checks that, knowing the model).
    logit_bias: Annotated[dict[TokenId, LogitBiasValue], Field(max_length=MAX_LOGIT_BIAS)] = Field(
        default_factory=dict
    )
    #: Keep generating after an end-of-sequence token.
    ignore_eos: bool = False
    #: Token ids that end a choice (finish reason ``stop``), as the eos token does.
    stop_token_ids: StopTokenIds = Field(default_factory=list)
    #: Return each token's logprob and this many most likely alternatives; None returns none.
    logprobs: TopLogprobs | None = None


#: Most bytes a constraint may take as JSON: a schema's compile time grows with its size (quadratically
#: with optional properties: ~80 ms at this size), and the API checks it on its request thread.
MAX_CONSTRAINT_BYTES = 64 * 1024


class _ConstraintBase(_Wire):
    #: The request parameter the constraint came from: errors about it name it.
    param: str = "response_format"


class JsonSchemaConstraint(_ConstraintBase):
    """JSON matching ``json_schema`` (``{"type": "object"}``: any JSON object), without whitespace."""

    type: Literal["json_schema"] = "json_schema"
    json_schema: dict[str, Any]


class RegexConstraint(_ConstraintBase):
    """Text matching ``pattern`` in full (Rust ``regex`` syntax)."""

    type: Literal["regex"] = "regex"
    pattern: str


class ChoiceConstraint(_ConstraintBase):
    """Exactly one of ``choices``."""

    type: Literal["choice"] = "choice"
    choices: list[str] = Field(min_length=1)


class GrammarConstraint(_ConstraintBase):
    """Text of a context-free grammar: Lark (llguidance's dialect) or GBNF."""

    type: Literal["grammar"] = "grammar"
    grammar: str


class Tag(_Wire):
    """A structured segment: the text ``begin``, JSON matching ``json_schema``, the text ``end``."""

    begin: str
    json_schema: dict[str, Any]
    end: str = ""


class TagsConstraint(_ConstraintBase):
    """Segments opened by the marker ``trigger`` (every tag's ``begin`` starts with it): tool calls.

    Lazy (``required`` false, for ``tool_choice: auto``): free text, and wherever the model writes
    the trigger one whole tag follows. Required: tags only, from the first token. ``parallel``: any
    number of tags (whitespace between them when required), else at most one (exactly one when required).
    """

    type: Literal["tags"] = "tags"
    trigger: str = Field(min_length=1)
    tags: list[Tag] = Field(min_length=1)
    required: bool = False
    parallel: bool = True


#: What a job's output must match (``GenerateJob.constraint``); see ``workers.constraints``.
Constraint = Annotated[
    JsonSchemaConstraint | RegexConstraint | ChoiceConstraint | GrammarConstraint | TagsConstraint,
    Field(discriminator="type"),
]


class ChatMessage(_Wire):
    """A chat turn with its content flattened to text."""

    role: str
    content: str
    name: str | None = None
    #: An assistant turn's calls (their results follow as ``tool`` turns naming ``tool_call_id``).
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class _JobBase(_Wire):
    job_id: str
    model: str
    #: Pub/sub channel of the API process waiting for this job's events.
    reply_to: str
    #: Epoch seconds after which nobody waits for the result.
    deadline: float
    #: The hashed API key that made the job, when keys are configured: only it may see or cancel it.
    owner: str | None = None
    #: The priority band it was admitted in, and its client's fair-share lane (docs/scheduling.md):
    #: together they name its queue (``keys.queue_name``). Aging may move it to a higher band later.
    band: Band = DEFAULT_BAND
    lane: int = Field(0, ge=0, lt=LANES_PER_BAND)
    #: Which run of the job this is: set by the worker from the job's record
    #: (``keys.JOB_RUN_FIELD``), never by the API's payload; every event of the run carries it.
    run: int = 0


class GenerateJob(_JobBase):
    """Chat (``messages``) or completion (``prompts``) generation, ``n`` choices per prompt."""

    type: Literal["generate"] = "generate"
    stream: bool = False
    messages: list[ChatMessage] | None = None
    #: Completion prompts, as text or as token ids.
    prompts: list[str | list[int]] | None = None
    n: int = 1
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    #: Completions: each choice starts with its prompt (and its prompt tokens' logprobs).
    echo: bool = False
    #: What every choice's text must match (structured output); None: free text.
    constraint: Constraint | None = None
    #: Chat: the tools offered and how they may be called; None: no tools (``tool_choice: none``).
    tools: ToolUse | None = None


class EmbedJob(_JobBase):
    """Embed every input."""

    type: Literal["embed"] = "embed"
    #: Texts, or token ids used as they are (no special tokens added).
    inputs: list[str | list[int]]
    #: Truncate each vector to this many dimensions, then renormalise it.
    dimensions: int | None = None


class RerankJob(_JobBase):
    """Score each document against the query."""

    type: Literal["rerank"] = "rerank"
    query: str
    documents: list[str]
    #: Scores are the model's logits instead of their sigmoid.
    raw_scores: bool = False


#: Any job, as code on either side of the queue types it.
AnyJob = GenerateJob | EmbedJob | RerankJob
#: Any job on the wire, told apart by ``type``.
Job = Annotated[AnyJob, Field(discriminator="type")]


class Usage(_Wire):
    """Token counts, as OpenAI reports them."""

    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class TopLogprob(_Wire):
    """A candidate token and its logprob; ``bytes`` are its UTF-8 bytes (a piece of a character, maybe)."""

    id: int
    token: str
    bytes: list[int]
    logprob: float | None = None


class TokenLogprob(TopLogprob):
    """A token of a choice, its logprob (None for a prompt's first token) and the likeliest alternatives."""

    top: list[TopLogprob] = Field(default_factory=list)


class Choice(_Wire):
    """One finished choice; ``index`` is ``prompt_index * n + sample_index``."""

    index: int
    text: str
    finish_reason: FinishReason
    #: One entry per token generated (echoed prompt tokens first), when logprobs were asked for.
    logprobs: list[TokenLogprob] | None = None
    #: The calls the choice made (its ``text`` is what it wrote besides them).
    tool_calls: list[ToolCall] | None = None


class GenerateResult(_Wire):
    type: Literal["generate"] = "generate"
    choices: list[Choice]
    usage: Usage


class EmbedResult(_Wire):
    type: Literal["embed"] = "embed"
    embeddings: list[list[float]]
    usage: Usage
    #: Tokens of each input, in input order: how the API splits a coalesced job's usage.
    input_tokens: list[int] = Field(default_factory=list)


class RerankResult(_Wire):
    type: Literal["rerank"] = "rerank"
    #: One score per document, in document order.
    scores: list[float]
    usage: Usage


#: Any result, as code on either side of the queue types it.
AnyResult = GenerateResult | EmbedResult | RerankResult
#: Any result on the wire, told apart by ``type``.
Result = Annotated[AnyResult, Field(discriminator="type")]


class BadMessage(ValueError):
    """A payload read from Redis is not a valid modelyard message."""


_JOB = TypeAdapter(Job)
_RESULT = TypeAdapter(Result)


def decode_job(payload: Any) -> GenerateJob | EmbedJob | RerankJob:
    """Validate a job payload taken off a queue."""
    try:
        return _JOB.validate_python(payload)
    except ValidationError as exc:
        raise BadMessage(f"invalid job payload: {exc}") from exc


class ReplyAddress(BaseModel):
    """Where a job's events go: the part of a payload read even when the rest is invalid."""

    model_config = ConfigDict(extra="ignore")

    job_id: str
    reply_to: str


def reply_address(payload: Any) -> ReplyAddress | None:
    """The reply address of a payload that ``decode_job`` refused, or None when it has none."""
    try:
        return ReplyAddress.model_validate(payload)
    except ValidationError:
        return None


def decode_result(payload: Any) -> GenerateResult | EmbedResult | RerankResult:
    """Validate a job result read back from rq."""
    try:
        return _RESULT.validate_python(payload)
    except ValidationError as exc:
        raise BadMessage(f"invalid job result: {exc}") from exc
