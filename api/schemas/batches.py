"""The body of ``POST /v1/batches``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from api.schemas.base import BodyModel

Endpoint = Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank", "/v1/responses"]


class BatchRequest(BodyModel):
    input_file_id: str = Field(min_length=1, max_length=64)
    endpoint: Endpoint
    completion_window: Literal["24h"]
    #: OpenAI's metadata: at most 16 pairs, keys up to 64 characters, values up to 512.
    metadata: (
        Annotated[
            dict[
                Annotated[str, StringConstraints(max_length=64)],
                Annotated[str, StringConstraints(max_length=512)],
            ],
            Field(max_length=16),
        ]
        | None
    ) = None
