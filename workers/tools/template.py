"""Tools and tool-call history as chat templates take them, and what a template says about tools."""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Sequence
from typing import Any

from shared.jobs import ChatMessage
from shared.tools import ToolCall
from workers.tools.formats import FORMATS, HERMES_OPEN, MISTRAL_CALLS, PYTHON_TAG, ToolFormat

_ALPHANUMERIC = string.ascii_letters + string.digits


def renders_tools(template: str) -> bool:
    """Whether a chat template reads the ``tools`` it is given (one that does not ignores them)."""
    try:
        from jinja2 import Environment, meta

        return "tools" in meta.find_undeclared_variables(Environment().parse(template))
    except Exception:  # extensions (e.g. {% generation %}) the plain parser does not know
        return re.search(r"\btools\b", template) is not None


def detect_format(template: str) -> ToolFormat | None:
    """The tool-call format a chat template teaches its model, from the markers it writes."""
    if HERMES_OPEN in template:
        return FORMATS["hermes"]
    if MISTRAL_CALLS in template:
        return FORMATS["mistral"]
    if PYTHON_TAG in template or ('"parameters"' in template and "<|start_header_id|>" in template):
        return FORMATS["llama3_json"]
    return None


def conversation(messages: Sequence[ChatMessage], fmt: ToolFormat | None) -> list[dict[str, Any]]:
    """The messages as a chat template takes them.

    A call's arguments become a dict (templates write ``arguments | tojson`` or iterate over
    them); Mistral's templates want call ids of 9 letters and digits, so theirs are mapped to such
    ids, the same for a call and its result.
    """
    short_ids = fmt is not None and fmt.name == "mistral"
    out = []
    for message in messages:
        item = message.model_dump(exclude_none=True, exclude={"tool_calls"})
        if message.tool_calls:
            item["tool_calls"] = [_call(call, short_ids) for call in message.tool_calls]
        if short_ids and message.tool_call_id is not None:
            item["tool_call_id"] = mistral_id(message.tool_call_id)
        out.append(item)
    return out


def _call(call: ToolCall, short_ids: bool) -> dict[str, Any]:
    try:
        arguments: Any = json.loads(call.function.arguments)
    except ValueError:  # the API refuses such history; a job from elsewhere renders as it is
        arguments = call.function.arguments
    return {
        "id": mistral_id(call.id) if short_ids else call.id,
        "type": "function",
        "function": {"name": call.function.name, "arguments": arguments},
    }


def mistral_id(call_id: str) -> str:
    """A 9-character id for ``call_id``: itself if it is one, else derived from it."""
    if len(call_id) == 9 and call_id.isalnum():
        return call_id
    digest = hashlib.sha256(call_id.encode()).digest()
    return "".join(_ALPHANUMERIC[b % len(_ALPHANUMERIC)] for b in digest[:9])
