"""Embeddings and rerank request bodies."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.schemas.base import RequestModel
from shared.errors import InvalidRequest

#: OpenAI's limit on inputs per embeddings request.
MAX_EMBEDDING_INPUTS = 2048
MAX_RERANK_DOCUMENTS = 1000


class EmbeddingRequest(RequestModel):
    input: str | Annotated[list[str], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)

    @field_validator("input", mode="before")
    @classmethod
    def _no_token_ids(cls, value: object) -> object:
        if isinstance(value, list) and value and not isinstance(value[0], str):
            raise ValueError("token-id input is not supported; send text")
        return value

    @property
    def inputs(self) -> list[str]:
        inputs = [self.input] if isinstance(self.input, str) else list(self.input)
        for i, text in enumerate(inputs):
            if not text:
                param = "input" if isinstance(self.input, str) else f"input.{i}"
                raise InvalidRequest("an input must not be empty", param=param)
        if self.dimensions is not None:
            raise InvalidRequest(
                "parameter 'dimensions' is not supported", param="dimensions", code="unsupported_parameter"
            )
        return inputs


class RerankDocument(BaseModel):
    """Cohere and Jina also accept documents as ``{"text": ...}`` objects."""

    model_config = ConfigDict(extra="allow")

    text: str


class RerankRequest(RequestModel):
    query: str = Field(min_length=1)
    documents: Annotated[list[str | RerankDocument], Field(min_length=1, max_length=MAX_RERANK_DOCUMENTS)]
    top_n: int | None = Field(None, ge=1)
    return_documents: bool = True

    @property
    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]
