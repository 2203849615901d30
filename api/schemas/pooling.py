"""Embeddings and rerank request bodies."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    Field,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from api.schemas.base import BodyModel, RequestModel, as_items, check_text_or_tokens, text_or_tokens
from shared.errors import InvalidRequest

#: OpenAI's limit on inputs per embeddings request.
MAX_EMBEDDING_INPUTS = 2048
MAX_RERANK_DOCUMENTS = 1000


class EmbeddingRequest(RequestModel):
    #: A text, texts, token ids or lists of token ids (OpenAI's four shapes).
    input: text_or_tokens(MAX_EMBEDDING_INPUTS)
    encoding_format: Literal["float", "base64"] = "float"
    #: Keep the first ``dimensions`` of each vector, renormalised (the worker knows the model's size).
    dimensions: int | None = Field(None, ge=1)

    @field_validator("input", mode="wrap")
    @classmethod
    def _input_shape(cls, value: object, handler: ValidatorFunctionWrapHandler) -> object:
        return check_text_or_tokens(value, handler, "input", MAX_EMBEDDING_INPUTS)

    @property
    def inputs(self) -> list[str | list[int]]:
        value = self.input
        inputs = as_items(value)
        for i, item in enumerate(inputs):
            if not item:
                param = "input" if isinstance(value, str) else f"input.{i}"
                raise InvalidRequest("an input must not be empty", param=param)
        return inputs


class RerankDocument(BodyModel):
    """Cohere and Jina also accept documents as ``{"text": ...}`` objects."""

    text: str


class RerankRequest(RequestModel):
    """Cohere/Jina's shape (``documents``), or TEI's (``texts``), which is answered in TEI's shape."""

    query: str = Field(min_length=1)
    documents: (
        Annotated[list[str | RerankDocument], Field(min_length=1, max_length=MAX_RERANK_DOCUMENTS)] | None
    ) = None
    top_n: int | None = Field(None, ge=1)
    return_documents: bool = True
    # Text Embeddings Inference's names.
    texts: Annotated[list[str], Field(min_length=1, max_length=MAX_RERANK_DOCUMENTS)] | None = None
    #: Scores are the model's logits rather than their sigmoid.
    raw_scores: bool = False
    #: TEI: put each text in its result.
    return_text: bool = False

    @property
    def tei(self) -> bool:
        """Whether the request is TEI-shaped, and so is its response."""
        return self.texts is not None

    @property
    def candidates(self) -> list[str]:
        """The texts to score, in the client's order."""
        if self.texts is not None:
            if self.documents is not None:
                raise InvalidRequest("send either 'documents' or 'texts', not both", param="texts")
            return list(self.texts)
        if self.documents is None:
            raise InvalidRequest(
                "missing required parameter: 'documents'",
                param="documents",
                code="missing_required_parameter",
            )
        return [d if isinstance(d, str) else d.text for d in self.documents]
