"""Response objects and their output items, in OpenAI's shapes (``types/responses/response.py``).

Item ids are derived from the response id and the item's place in ``output``, so that every API
process that translates the same job events writes the same objects.
"""

from __future__ import annotations

import time
from typing import Any

from shared.errors import ModelyardError
from shared.jobs import Usage

#: Statuses after which a response changes no more.
FINAL = frozenset({"completed", "incomplete", "failed", "cancelled"})


def response_id(job_id: str) -> str:
    return f"resp_{job_id}"


def skeleton(response: str, request: Any, *, background: bool) -> dict[str, Any]:
    """The parts of a response object known when it is created (a ``ResponseRequest``)."""
    fmt = request.text.format if request.text and request.text.format else None
    return {
        "id": response,
        "object": "response",
        "created_at": int(time.time()),
        "status": "queued" if background else "in_progress",
        "background": background,
        "error": None,
        "incomplete_details": None,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "model": request.model,
        "output": [],
        "parallel_tool_calls": request.parallel_tool_calls,
        "previous_response_id": request.previous_response_id,
        "store": request.store,
        "temperature": 1.0 if request.temperature is None else request.temperature,
        "top_p": 1.0 if request.top_p is None else request.top_p,
        "text": {"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}},
        "tool_choice": _tool_choice(request.tool_choice),
        "tools": [tool.model_dump(exclude_none=True) for tool in request.tools or []],
        "truncation": "disabled",
        "usage": None,
        "user": request.user,
        "metadata": request.metadata or {},
    }


def _tool_choice(choice: Any) -> Any:
    if choice is None:
        return "auto"
    return choice if isinstance(choice, str) else {"type": "function", "name": choice.name}


def usage(counts: Usage) -> dict[str, Any]:
    return {
        "input_tokens": counts.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": counts.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": counts.total_tokens,
    }


def error_body(error: ModelyardError) -> dict[str, str]:
    """A failed response's ``error``."""
    return {"code": error.code or error.type, "message": error.message}


def item_id(response: str, kind: str, index: int) -> str:
    """``msg_<job>_<index>`` or ``fc_<job>_<index>``."""
    return f"{kind}_{response.removeprefix('resp_')}_{index}"


def message_item(response: str, index: int, text: str, status: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id(response, "msg", index),
        "status": status,
        "role": "assistant",
        "content": [output_text(text)],
    }


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def call_item(
    response: str, index: int, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id(response, "fc", index),
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def assistant_turn(output: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A response's output as the chat turn that continues its conversation (None: no output)."""
    texts = [part["text"] for item in output if item["type"] == "message" for part in item["content"]]
    calls = [
        {
            "id": item["call_id"],
            "type": "function",
            "function": {"name": item["name"], "arguments": item["arguments"]},
        }
        for item in output
        if item["type"] == "function_call"
    ]
    if not texts and not calls:
        return None
    turn: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        turn["tool_calls"] = calls
    return turn
