"""Chat completions and completions request bodies."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    Field,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from api.schemas.base import (
    BodyModel,
    RequestModel,
    as_items,
    check_text_or_tokens,
    reject_unsupported,
    text_or_tokens,
)
from api.schemas.structured import ResponseFormat, StructuredOutputs, request_constraint
from api.schemas.tools import ToolCallParam, ToolChoice, ToolParam, tool_use
from shared.errors import InvalidRequest
from shared.jobs import (
    MAX_LOGIT_BIAS,
    TOKEN_ID_MAX,
    ChatMessage,
    Constraint,
    LogitBiasValue,
    MaxTokens,
    Penalty,
    Probability,
    RepetitionPenalty,
    SamplingParams,
    Seed,
    StopStrings,
    StopTokenIds,
    Temperature,
    TopLogprobs,
)
from shared.tools import ToolUse

# Sampling ranges are SamplingParams' (shared/jobs.py): the worker checks the same ones.
Stop = str | StopStrings | None
#: Prompts in one completions request.
MAX_PROMPTS = 1024

#: Parameters accepted only with their neutral value until the engine implements them.
_NOT_YET = {
    "tools": None,  # completions only: chat declares them
    "tool_choice": None,
    "functions": None,  # the deprecated function calling: tools replace it
    "function_call": None,
    "echo": False,  # chat only: completions declare it
    "suffix": None,
}


class StreamOptions(BodyModel):
    include_usage: bool = False


class TextPart(BodyModel):
    """A content part; only text parts can be served by text models."""

    type: str
    text: str | None = None


class Message(BodyModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    #: An assistant turn's calls, and the call a tool turn answers.
    tool_calls: list[ToolCallParam] | None = None
    tool_call_id: str | None = None

    def flatten(self, position: int) -> ChatMessage:
        """The message with its text parts joined; other part types are refused."""
        if isinstance(self.content, list):
            texts = []
            for i, part in enumerate(self.content):
                if part.type != "text" or part.text is None:
                    raise InvalidRequest(
                        f"content part type {part.type!r} is not supported; only 'text' parts are",
                        param=f"messages.{position}.content.{i}.type",
                    )
                texts.append(part.text)
            content = "".join(texts)
        else:
            content = self.content or ""
        calls = [
            call.to_wire(f"messages.{position}.tool_calls.{i}")
            for i, call in enumerate(self.tool_calls or [])
        ]
        return ChatMessage(
            role=self.role,
            content=content,
            name=self.name,
            tool_calls=calls or None,
            tool_call_id=self.tool_call_id,
        )


class _GenerationRequest(RequestModel):
    temperature: Temperature = 1.0
    top_p: Probability = 1.0
    n: int = Field(1, ge=1, le=128)
    stop: Stop = None
    seed: Seed | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    #: Token id (as a string, JSON keys are) -> bias added to its logit.
    #: (SamplingParams' keys are ints: JSON's are strings, checked below.)
    logit_bias: Annotated[dict[str, LogitBiasValue], Field(max_length=MAX_LOGIT_BIAS)] | None = None
    # vLLM's extras (the SDK's ``extra_body``).
    top_k: int = Field(-1, ge=-1)  # -1 or 0: off (SamplingParams' 0)
    min_p: Probability = 0.0
    repetition_penalty: RepetitionPenalty = 1.0
    ignore_eos: bool = False
    stop_token_ids: StopTokenIds | None = None
    # Structured output: OpenAI's, and vLLM's extra.
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None

    @field_validator("logit_bias")
    @classmethod
    def _token_id_keys(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            token = key.strip()
            # isascii: int() takes "²"; the length first: int() of thousands of digits is slow or fails.
            if not (token.isascii() and token.isdigit() and len(token) <= 10 and int(token) <= TOKEN_ID_MAX):
                shown = key if len(key) <= 24 else key[:24] + "..."
                raise ValueError(f"keys must be token ids (0 to {TOKEN_ID_MAX}), not {shown!r}")
        return value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def _logprobs(self) -> int | None:
        """Alternatives per token to return; None: no logprobs."""
        return None

    def constraint(self) -> Constraint | None:
        """What the output must match, checked by the grammar backend; None: free text."""
        return request_constraint(self.response_format, self.structured_outputs, self)

    def sampling(self, max_tokens: int | None) -> SamplingParams:
        """The engine's view of the sampling parameters."""
        reject_unsupported(self, _NOT_YET)
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=[s for s in stop if s],
            seed=self.seed,
            top_k=max(self.top_k, 0),
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logit_bias={int(k): v for k, v in (self.logit_bias or {}).items()},
            ignore_eos=self.ignore_eos,
            stop_token_ids=list(self.stop_token_ids or []),
            logprobs=self._logprobs(),
        )


class ChatCompletionRequest(_GenerationRequest):
    messages: list[Message] = Field(min_length=1)
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    logprobs: bool | None = False
    top_logprobs: TopLogprobs | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True

    def _logprobs(self) -> int | None:
        if not self.logprobs:
            if self.top_logprobs:  # vLLM and OpenAI refuse this too; 0 is harmless
                raise InvalidRequest("top_logprobs requires logprobs to be true", param="top_logprobs")
            return None
        return self.top_logprobs or 0

    def tool_use(self) -> ToolUse | None:
        """The tools the prompt offers and how they may be called (None: no tools)."""
        structured = self.response_format is not None and self.response_format.type != "text"
        return tool_use(self.tools, self.tool_choice, self.parallel_tool_calls, structured)

    def chat_messages(self) -> list[ChatMessage]:
        return [message.flatten(i) for i, message in enumerate(self.messages)]

    @property
    def token_limit(self) -> int | None:
        """``max_completion_tokens`` supersedes the deprecated ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_GenerationRequest):
    #: Text, texts, token ids or lists of token ids; one choice group per prompt.
    prompt: text_or_tokens(MAX_PROMPTS)
    #: OpenAI's default for completions is 16 tokens.
    max_tokens: MaxTokens | None = 16
    best_of: int | None = Field(None, ge=1, le=128)
    #: Alternatives per token (0 returns only the chosen token's logprob).
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False

    @field_validator("prompt", mode="wrap")
    @classmethod
    def _prompt_shape(cls, value: object, handler: ValidatorFunctionWrapHandler) -> object:
        return check_text_or_tokens(value, handler, "prompt", MAX_PROMPTS)

    def _logprobs(self) -> int | None:
        return self.logprobs

    @property
    def prompts(self) -> list[str | list[int]]:
        return as_items(self.prompt)

    def check(self) -> None:
        if self.best_of is not None and self.best_of != self.n:
            raise InvalidRequest(
                "best_of other than n is not supported", param="best_of", code="unsupported_parameter"
            )
