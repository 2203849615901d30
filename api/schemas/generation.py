"""Chat completions and completions request bodies."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.schemas.base import INT64_MAX, RequestModel, reject_unsupported
from shared.errors import InvalidRequest
from shared.jobs import ChatMessage, SamplingParams

MaxTokens = Annotated[int, Field(ge=1, le=1_000_000)]
Stop = str | Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=16)] | None

#: Parameters accepted only with their neutral value until the engine implements them.
_NOT_YET = {
    "logprobs": False,
    "top_logprobs": None,
    "logit_bias": None,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "tools": None,
    "tool_choice": None,
    "functions": None,
    "response_format": None,
    "echo": False,
    "suffix": None,
}


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

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

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
        )


class ChatCompletionRequest(_GenerationRequest):
    messages: list[Message] = Field(min_length=1)
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None

    def chat_messages(self) -> list[ChatMessage]:
        return [message.flatten(i) for i, message in enumerate(self.messages)]

    @property
    def token_limit(self) -> int | None:
        """``max_completion_tokens`` supersedes the deprecated ``max_tokens``."""
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_GenerationRequest):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1024)]
    #: OpenAI's default for completions is 16 tokens.
    max_tokens: MaxTokens | None = 16
    best_of: int | None = Field(None, ge=1, le=128)

    @field_validator("prompt", mode="before")
    @classmethod
    def _no_token_ids(cls, value: object) -> object:
        if isinstance(value, list) and value and not isinstance(value[0], str):
            raise ValueError("token-id prompts are not supported; send text")
        return value

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def check(self) -> None:
        if self.best_of is not None and self.best_of != self.n:
            raise InvalidRequest(
                "best_of other than n is not supported", param="best_of", code="unsupported_parameter"
            )
