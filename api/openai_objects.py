"""OpenAI response objects built from job results (a stream's chunks: api/streaming.py)."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from api import logprobs
from shared.jobs import Choice, EmbedResult, GenerateResult, RerankResult, Usage


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
                "message": chat_message(c),
                "logprobs": logprobs.chat(c.logprobs),
                "finish_reason": c.finish_reason,
            }
            for c in result.choices
        ],
        "usage": usage_dict(result.usage),
    }


def chat_message(choice: Choice) -> dict[str, Any]:
    """A choice as the assistant's message; with calls, ``content`` is None unless text came too."""
    if not choice.tool_calls:
        return {"role": "assistant", "content": choice.text}
    return {
        "role": "assistant",
        "content": choice.text or None,
        "tool_calls": [call.model_dump() for call in choice.tool_calls],
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


def list_object(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """OpenAI's list object (``/v1/files``, ``/v1/batches``, a response's input items)."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def page(items: list[dict[str, Any]], order: str, limit: int, after: str | None) -> dict[str, Any]:
    """The list object of ``items`` (oldest first) in ``order`` (desc: newest first, OpenAI's
    default), from after the item ``after``, at most ``limit``."""
    ordered = list(reversed(items)) if order == "desc" else list(items)
    if after is not None:
        ids = [item["id"] for item in ordered]
        ordered = ordered[ids.index(after) + 1 :] if after in ids else []
    return list_object(ordered[:limit], len(ordered) > limit)
