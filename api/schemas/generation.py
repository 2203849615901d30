"""Chat completions and completions request bodies."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from api.schemas.base import (
    INT64_MAX,
    RequestModel,
    as_items,
    check_text_or_tokens,
    reject_unsupported,
    text_or_tokens,
)
from shared.errors import InvalidRequest
from shared.jobs import ChatMessage, SamplingParams

MaxTokens = Annotated[int, Field(ge=1, le=1_000_000)]
Stop = str | Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=16)] | None
TokenId = Annotated[int, Field(ge=0, le=2**31 - 1)]
#: Prompts in one completions request.
MAX_PROMPTS = 1024
Penalty = Annotated[float, Field(ge=-2, le=2)]

#: Parameters accepted only with their neutral value until the engine implements them.
_NOT_YET = {
    "tools": None,
    "tool_choice": None,
    "functions": None,
    "response_format": None,
    "echo": False,  # chat only: completions declare it
    "suffix": None,
}
#: Most ``logit_bias`` entries a request may carry.
MAX_LOGIT_BIAS = 1024


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class TextPart(BaseModel):
    """A content part; only text parts can be served by text models."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

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
        return ChatMessage(role=self.role, content=content, name=self.name)


class _GenerationRequest(RequestModel):
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, ge=0, le=1)
    n: int = Field(1, ge=1, le=128)
    stop: Stop = None
    seed: int | None = Field(None, ge=-INT64_MAX - 1, le=INT64_MAX)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    #: Token id (as a string, JSON keys are) -> bias added to its logit.
    logit_bias: (
        Annotated[dict[str, Annotated[float, Field(ge=-100, le=100)]], Field(max_length=MAX_LOGIT_BIAS)]
        | None
    ) = None
    # vLLM's extras (the SDK's ``extra_body``).
    top_k: int = Field(-1, ge=-1)  # -1 or 0: off
    min_p: float = Field(0.0, ge=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0, le=100)
    ignore_eos: bool = False
    stop_token_ids: Annotated[list[TokenId], Field(max_length=64)] | None = None

    @field_validator("logit_bias")
    @classmethod
    def _token_id_keys(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if not (key.strip().isascii() and key.strip().isdigit()):  # int() refuses "²"
                raise ValueError(f"keys must be token ids, not {key!r}")
        return value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def _logprobs(self) -> int | None:
        """Alternatives per token to return; None: no logprobs."""
        return None

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
    top_logprobs: int | None = Field(None, ge=0, le=20)

    def _logprobs(self) -> int | None:
        if not self.logprobs:
            if self.top_logprobs:  # vLLM and OpenAI refuse this too; 0 is harmless
                raise InvalidRequest("top_logprobs requires logprobs to be true", param="top_logprobs")
            return None
        return self.top_logprobs or 0

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
