"""Tool calling in chat request bodies: ``tools``, ``tool_choice``, ``parallel_tool_calls`` and the
calls in the history, as OpenAI's API takes them.

They become the job's :class:`~shared.tools.ToolUse` (none for ``tool_choice: "none"``: the tools are
left out of the prompt). Each tool's ``parameters`` is checked by the grammar backend here, so a
schema it cannot compile is a 400 naming that tool before anything is queued.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field

from api.schemas.base import BodyModel
from shared.errors import InvalidRequest
from shared.jobs import JsonSchemaConstraint
from shared.tools import (
    FUNCTION_NAME_PATTERN,
    MAX_TOOLS,
    FunctionCall,
    FunctionDefinition,
    Tool,
    ToolCall,
    ToolUse,
)
from workers.constraints import get_backend


class FunctionParam(BodyModel):
    name: str = Field(pattern=FUNCTION_NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolParam(BodyModel):
    type: Literal["function"]
    function: FunctionParam


class FunctionName(BodyModel):
    name: str


class NamedToolChoice(BodyModel):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class CalledFunction(BodyModel):
    name: str
    #: JSON text, as the API returned it.
    arguments: str


class ToolCallParam(BodyModel):
    """A call of an assistant turn in the history."""

    id: str
    type: Literal["function"] = "function"
    function: CalledFunction

    def to_wire(self, param: str) -> ToolCall:
        try:
            json.loads(self.function.arguments)
        except ValueError as exc:
            raise InvalidRequest(
                f"the arguments of a call must be JSON text: {exc}", param=f"{param}.function.arguments"
            ) from exc
        return ToolCall(
            id=self.id, function=FunctionCall(name=self.function.name, arguments=self.function.arguments)
        )


def tool_use(
    tools: list[ToolParam] | None, choice: ToolChoice | None, parallel: bool, structured: bool
) -> ToolUse | None:
    """The job's tools and how they may be called; None when the prompt offers none.

    ``structured``: the request also asks for a ``response_format`` (refused together with tools).
    """
    if not tools:
        if choice not in (None, "none", "auto"):
            raise InvalidRequest("tool_choice needs tools to choose from", param="tool_choice")
        return None
    if choice == "none":
        return None
    if len(tools) > MAX_TOOLS:
        raise InvalidRequest(f"at most {MAX_TOOLS} tools may be offered", param="tools")
    if structured:
        raise InvalidRequest(
            "response_format cannot be combined with tools (unless tool_choice is 'none')",
            param="response_format",
        )
    names = [tool.function.name for tool in tools]
    for i, tool in enumerate(tools):
        if names.index(tool.function.name) != i:
            raise InvalidRequest(
                f"two tools are named {tool.function.name!r}", param=f"tools.{i}.function.name"
            )
        if tool.function.parameters is not None:
            param = f"tools.{i}.function.parameters"
            get_backend().check(JsonSchemaConstraint(json_schema=tool.function.parameters, param=param))
    named = choice.function.name if isinstance(choice, NamedToolChoice) else None
    if named is not None and named not in names:
        raise InvalidRequest(
            f"tool_choice names {named!r}, which is not one of the tools", param="tool_choice"
        )
    return ToolUse(
        tools=[Tool(function=FunctionDefinition(**_definition(t.function))) for t in tools],
        mode="function" if named else (choice or "auto"),
        function=named,
        parallel=parallel,
    )


def _definition(function: FunctionParam) -> dict[str, Any]:
    """The declared fields (clients send extras; the wire refuses them)."""
    return {name: getattr(function, name) for name in FunctionParam.model_fields}
