"""Job payloads (API -> worker, through rq) and job results (worker -> API).

A job is one client request with all its inputs: one rq round trip per request, not per input.
Only JSON crosses Redis; :func:`decode_job` validates what a worker takes off a queue.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

FinishReason = Literal["stop", "length", "cancelled"]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SamplingParams(_Wire):
    """How to pick tokens; OpenAI semantics."""

    #: Completion tokens per choice; None means whatever the context length leaves.
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    #: Strings that end a choice; they are not part of its text.
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None
    #: Keep the ``top_k`` most likely tokens; 0 keeps all.
    top_k: int = 0
    #: Drop tokens less likely than ``min_p`` times the most likely one.
    min_p: float = 0.0
    #: HF/vLLM: divide positive logits (multiply negative ones) of tokens in the prompt or output.
    repetition_penalty: float = 1.0
    #: OpenAI: subtract once from the logit of every token already generated.
    presence_penalty: float = 0.0
    #: OpenAI: subtract per occurrence from the logit of every token already generated.
    frequency_penalty: float = 0.0
    #: Added to the logits of these token ids before sampling.
    logit_bias: dict[int, float] = Field(default_factory=dict)
    #: Keep generating after an end-of-sequence token.
    ignore_eos: bool = False
    #: Token ids that end a choice (finish reason ``stop``), as the eos token does.
    stop_token_ids: list[int] = Field(default_factory=list)
    #: Return each token's logprob and this many most likely alternatives; None returns none.
    logprobs: int | None = None


class ChatMessage(_Wire):
    """A chat turn with its content flattened to text."""

    role: str
    content: str
    name: str | None = None


class _JobBase(_Wire):
    job_id: str
    model: str
    #: Pub/sub channel of the API process waiting for this job's events.
    reply_to: str
    #: Epoch seconds after which nobody waits for the result.
    deadline: float
    #: Who to charge the job's tokens to (see api/ratelimit.py); None when no limit is set.
    rate_subject: str | None = None


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


Job = Annotated[GenerateJob | EmbedJob | RerankJob, Field(discriminator="type")]


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


Result = Annotated[GenerateResult | EmbedResult | RerankResult, Field(discriminator="type")]


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


def decode_result(payload: Any) -> GenerateResult | EmbedResult | RerankResult:
    """Validate a job result read back from rq."""
    try:
        return _RESULT.validate_python(payload)
    except ValidationError as exc:
        raise BadMessage(f"invalid job result: {exc}") from exc
