"""The Responses API's request body (``POST /v1/responses``), and its translation into a chat body.

A Responses request is served by the chat completions machinery: :meth:`ResponseRequest.chat_body`
writes the equivalent chat completions body (``instructions`` as the system turn, input items as
messages, function calls and their outputs as assistant ``tool_calls`` and ``tool`` turns, flat
function tools as chat tools, ``text.format`` as ``response_format``, ``max_output_tokens`` as
``max_tokens``), which ``api.routes.generation.chat_generation`` validates and turns into the job.
:func:`responses_param` names a chat error's parameter as the Responses body has it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from api.schemas.base import BodyModel, RequestModel, parse_body
from shared.errors import InvalidRequest
from shared.jobs import MaxTokens, Probability, Seed, Temperature

#: Most items one request's ``input`` may hold.
MAX_INPUT_ITEMS = 2048


class ContentPart(BodyModel):
    """A text part of a message: ``input_text`` (or ``output_text`` in an assistant turn)."""

    type: str
    text: str | None = None


class MessageItem(BodyModel):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[ContentPart]
    id: str | None = None
    status: str | None = None


class FunctionCallItem(BodyModel):
    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    #: JSON text, as the model wrote it.
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(BodyModel):
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str
    id: str | None = None
    status: str | None = None


class FunctionTool(BodyModel):
    """A flat function tool (``{"type": "function", "name", "parameters", "strict"}``)."""

    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunction(BodyModel):
    type: Literal["function"]
    name: str


class TextFormat(BodyModel):
    """``text.format``: ``text``, ``json_object`` or ``json_schema`` (flat: name, schema, strict)."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextOptions(BodyModel):
    format: TextFormat | None = None


class ResponseRequest(RequestModel):
    input: str | Annotated[list[dict[str, Any]], Field(max_length=MAX_INPUT_ITEMS)]
    instructions: str | None = None
    max_output_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool = True
    text: TextOptions | None = None
    metadata: dict[str, str] | None = Field(None, max_length=16)
    user: str | None = None
    stream: bool = False
    store: bool = True
    background: bool = False
    previous_response_id: str | None = None
    #: An extra (``extra_body``), as chat takes it: a seed reproduces a sampled answer.
    seed: Seed | None = None
    #: vLLM's extra, as chat takes it: keep generating past the end-of-text token.
    ignore_eos: bool = False

    def input_items(self) -> list[MessageItem | FunctionCallItem | FunctionCallOutputItem]:
        """``input`` as items (a string is one user message); each item checked on its own so an
        error names it (``input.3.call_id``)."""
        if isinstance(self.input, str):
            return [MessageItem(role="user", content=self.input)]
        if not self.input:
            raise InvalidRequest("input must not be empty", param="input")
        return [_input_item(raw, f"input.{i}") for i, raw in enumerate(self.input)]

    def chat_body(self, history: list[dict[str, Any]], items: list[Any]) -> dict[str, Any]:
        """The equivalent chat completions body: ``history`` (a previous response's conversation,
        chat messages) then this request's ``items``."""
        if self.background and not self.store:
            raise InvalidRequest("background responses need store to be true", param="background")
        messages: list[dict[str, Any]] = []
        if self.instructions:
            messages.append({"role": "system", "content": self.instructions})
        messages += history + chat_messages(items)
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "parallel_tool_calls": self.parallel_tool_calls,
            "stream": self.stream,
            "ignore_eos": self.ignore_eos,
        }
        for name, value in (
            ("max_tokens", self.max_output_tokens),
            ("temperature", self.temperature),
            ("top_p", self.top_p),
            ("user", self.user),
            ("seed", self.seed),
            # The job's band, clamped as chat's is (api/priority.py; else the X-Priority header).
            ("priority", self.priority),
            ("service_tier", self.service_tier),
        ):
            if value is not None:
                body[name] = value
        if self.tools:
            body["tools"] = [
                {"type": "function", "function": tool.model_dump(exclude={"type"}, exclude_none=True)}
                for tool in self.tools
            ]
        if self.tool_choice is not None:
            choice = self.tool_choice
            body["tool_choice"] = (
                choice if isinstance(choice, str) else {"type": "function", "function": {"name": choice.name}}
            )
        fmt = self.text.format if self.text else None
        if fmt is not None and fmt.type != "text":
            if fmt.type == "json_object":
                body["response_format"] = {"type": "json_object"}
            elif fmt.json_schema is None:
                raise InvalidRequest(
                    "text.format of type 'json_schema' needs a 'schema'",
                    param="text.format.schema",
                    code="missing_required_parameter",
                )
            else:
                body["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": fmt.name or "response", "schema": fmt.json_schema},
                }
        return body


def _input_item(raw: dict[str, Any], param: str) -> MessageItem | FunctionCallItem | FunctionCallOutputItem:
    kind = raw.get("type", "message")
    if kind not in _ITEM_TYPES:
        raise InvalidRequest(
            f"input item type {kind!r} is not supported; only message, function_call and "
            "function_call_output items are",
            param=f"{param}.type",
        )
    try:
        return parse_body(_ITEM_TYPES[kind], raw)
    except InvalidRequest as exc:  # name the item: input.3.call_id, not call_id
        full = f"{param}.{exc.param}" if exc.param else param
        exc.message = exc.message.replace(f"'{exc.param}'", f"'{full}'", 1)
        exc.param = full
        raise


_ITEM_TYPES: dict[str, Any] = {
    "message": MessageItem,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
}


def chat_messages(items: list[Any]) -> list[dict[str, Any]]:
    """Input items as chat messages: consecutive function calls join one assistant turn (after the
    assistant's text, if it came just before), each output is a ``tool`` turn."""
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        if isinstance(item, MessageItem):
            messages.append({"role": item.role, "content": _text(item, f"input.{i}.content")})
        elif isinstance(item, FunctionCallItem):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
    return messages


def _text(item: MessageItem, param: str) -> str:
    if isinstance(item.content, str):
        return item.content
    texts = []
    for j, part in enumerate(item.content):
        if part.type not in ("input_text", "output_text", "text") or part.text is None:
            raise InvalidRequest(
                f"content part type {part.type!r} is not supported; only input_text parts are",
                param=f"{param}.{j}.type",
            )
        texts.append(part.text)
    return "".join(texts)


#: Chat parameter names -> the Responses body's.
_PARAMS = (
    ("messages", "input"),
    ("response_format.json_schema.schema", "text.format.schema"),
    ("response_format", "text.format"),
    ("max_tokens", "max_output_tokens"),
)


def responses_param(param: str | None) -> str | None:
    """A chat error's parameter as the Responses body names it (``tools.0.function.parameters``
    -> ``tools.0.parameters``); message indices are not mapped back to input items."""
    if not param:
        return param
    for chat, responses in _PARAMS:
        if param == chat or param.startswith(chat + "."):
            return responses + param[len(chat) :]
    if param.startswith("tools.") and ".function." in param:
        return param.replace(".function.", ".", 1)
    if param == "tool_choice.function.name":
        return "tool_choice.name"
    return param
