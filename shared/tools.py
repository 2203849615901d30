"""Tool calling on the wire: the tools a chat job offers, how it may call them, and the calls made.

The API turns OpenAI's ``tools``, ``tool_choice`` and ``parallel_tool_calls`` into a :class:`ToolUse`
on the job (none for ``tool_choice: "none"``: the tools are left out). The worker renders the tools
through the model's chat template, enforces the choice with a grammar, and parses the calls out of
the text (``workers/tools/``): a finished choice carries :class:`ToolCall` objects, a streamed one
sends :class:`ToolCallDelta` fragments.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: The tool-call formats a worker can parse (``tool_parser`` in the models file).
ToolParserName = Literal["hermes", "llama3_json", "mistral"]
TOOL_PARSERS: tuple[str, ...] = ToolParserName.__args__
#: OpenAI's rule for function names.
FUNCTION_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
#: Most tools one request may offer.
MAX_TOOLS = 128


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FunctionDefinition(_Wire):
    name: str = Field(pattern=FUNCTION_NAME_PATTERN)
    description: str | None = None
    #: The arguments' JSON Schema; None: the function takes no arguments.
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Wire):
    """A tool in OpenAI's shape (also what chat templates are given)."""

    type: Literal["function"] = "function"
    function: FunctionDefinition


class ToolUse(_Wire):
    """The tools a job offers and how its choices may call them (``tool_choice``)."""

    tools: list[Tool] = Field(min_length=1, max_length=MAX_TOOLS)
    #: ``auto``: text or calls; ``required``: at least one call; ``function``: exactly that call.
    mode: Literal["auto", "required", "function"] = "auto"
    #: The function a ``function`` mode must call.
    function: str | None = None
    #: More than one call per choice (``parallel_tool_calls``).
    parallel: bool = True

    def offered(self) -> list[Tool]:
        """The tools the model may call: all of them, or the named one."""
        if self.mode == "function":
            return [t for t in self.tools if t.function.name == self.function]
        return list(self.tools)


class FunctionCall(_Wire):
    name: str
    #: The arguments as the model wrote them: JSON text.
    arguments: str


class ToolCall(_Wire):
    """A call a choice made (or an assistant turn of the history made)."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ToolCallDelta(_Wire):
    """A fragment of a streamed call: ``id`` and ``name`` in the first one only, then arguments."""

    #: The call's place among its choice's calls.
    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""
