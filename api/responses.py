"""OpenAI response objects built from job results and events."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np

from api import logprobs
from shared.errors import ModelyardError
from shared.events import ChoiceDelta
from shared.jobs import EmbedResult, GenerateResult, RerankResult, Usage


def usage_dict(usage: Usage) -> dict[str, int]:
    return usage.model_dump()


def chat_completion(job_id: str, model: str, created: int, result: GenerateResult) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{job_id}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": c.index,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": logprobs.chat(c.logprobs),
                "finish_reason": c.finish_reason,
            }
            for c in result.choices
        ],
        "usage": usage_dict(result.usage),
    }


def completion(job_id: str, model: str, created: int, result: GenerateResult) -> dict[str, Any]:
    return {
        "id": f"cmpl-{job_id}",
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": c.index,
                "text": c.text,
                "logprobs": logprobs.completion(c.logprobs)[0],
                "finish_reason": c.finish_reason,
            }
            for c in result.choices
        ],
        "usage": usage_dict(result.usage),
    }


class ChunkWriter:
    """SSE frames of one streamed chat completion or completion."""

    def __init__(self, job_id: str, model: str, created: int, chat: bool, include_usage: bool) -> None:
        self.id = f"chatcmpl-{job_id}" if chat else f"cmpl-{job_id}"
        self.object = "chat.completion.chunk" if chat else "text_completion"
        self.model = model
        self.created = created
        self.chat = chat
        self.include_usage = include_usage
        #: Completions: where each choice's next token starts in its text (logprobs' text_offset).
        self._offsets: dict[int, int] = {}

    def _frame(self, choices: list[dict[str, Any]], usage: Usage | None = None) -> str:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = usage_dict(usage) if usage else None
        return sse(chunk)

    def opening(self, choice_count: int) -> list[str]:
        """Chat streams announce the assistant role first, one frame per choice."""
        if not self.chat:
            return []
        return [
            self._frame(
                [
                    {
                        "index": i,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            )
            for i in range(choice_count)
        ]

    def delta(self, delta: ChoiceDelta) -> list[str]:
        frames = []
        if self.chat:
            if delta.text or delta.logprobs:
                frames.append(
                    self._frame(
                        [
                            {
                                "index": delta.index,
                                "delta": {"content": delta.text},
                                "logprobs": logprobs.chat(delta.logprobs),
                                "finish_reason": None,
                            }
                        ]
                    )
                )
            if delta.finish_reason:
                frames.append(
                    self._frame(
                        [
                            {
                                "index": delta.index,
                                "delta": {},
                                "logprobs": None,
                                "finish_reason": delta.finish_reason,
                            }
                        ]
                    )
                )
        elif delta.text or delta.finish_reason or delta.logprobs:
            body, self._offsets[delta.index] = logprobs.completion(
                delta.logprobs, self._offsets.get(delta.index, 0)
            )
            frames.append(
                self._frame(
                    [
                        {
                            "index": delta.index,
                            "text": delta.text,
                            "logprobs": body,
                            "finish_reason": delta.finish_reason,
                        }
                    ]
                )
            )
        return frames

    def closing(self, usage: Usage) -> list[str]:
        """The usage frame (when asked for) and the end marker."""
        frames = [self._frame([], usage)] if self.include_usage else []
        return [*frames, DONE]


def embeddings(model: str, result: EmbedResult, encoding_format: str) -> dict[str, Any]:
    def encode(vector: list[float]) -> list[float] | str:
        if encoding_format == "base64":
            return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
        return vector

    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode(vector)}
            for i, vector in enumerate(result.embeddings)
        ],
        "model": model,
        "usage": {"prompt_tokens": result.usage.prompt_tokens, "total_tokens": result.usage.total_tokens},
    }


def rerank(
    job_id: str,
    model: str,
    result: RerankResult,
    documents: list[str],
    top_n: int | None,
    return_documents: bool,
) -> dict[str, Any]:
    order = sorted(range(len(result.scores)), key=lambda i: result.scores[i], reverse=True)
    results = []
    for i in order[: top_n or len(order)]:
        item: dict[str, Any] = {"index": i, "relevance_score": result.scores[i]}
        if return_documents:
            item["document"] = {"text": documents[i]}
        results.append(item)
    return {
        "id": f"rerank-{job_id}",
        "model": model,
        "results": results,
        "usage": {"prompt_tokens": result.usage.prompt_tokens, "total_tokens": result.usage.total_tokens},
    }


def tei_rerank(
    result: RerankResult, texts: list[str], top_n: int | None, return_text: bool
) -> list[dict[str, Any]]:
    """Text Embeddings Inference's rerank response: ``[{index, score, text?}]``, best first."""
    order = sorted(range(len(result.scores)), key=lambda i: result.scores[i], reverse=True)
    items = []
    for i in order[: top_n or len(order)]:
        item: dict[str, Any] = {"index": i, "score": result.scores[i]}
        if return_text:
            item["text"] = texts[i]
        items.append(item)
    return items


DONE = "data: [DONE]\n\n"
KEEPALIVE = ": keep-alive\n\n"


def queue_comment(position: int) -> str:
    """An SSE comment (clients ignore it) telling a waiting stream how many jobs are ahead of it."""
    return f": queued position={position}\n\n"


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'), ensure_ascii=False)}\n\n"


def sse_error(error: ModelyardError) -> str:
    """A mid-stream error: OpenAI's envelope in a data frame (the SDK raises it), then [DONE]."""
    return sse(error.to_dict())
