"""``tool_choice`` as a grammar: tag segments of the model's tool-call format (``TagsConstraint``).

``auto``: free text, and once the model writes the format's call marker a whole valid call must
follow (a lazy grammar). ``required``: calls only, at least one. A named function: exactly that
call. Every call's arguments match its tool's ``parameters``.
"""

from __future__ import annotations

from typing import Any

from shared.jobs import Tag, TagsConstraint
from shared.tools import ToolUse
from workers.tools.formats import ToolFormat

#: The arguments of a function declared without ``parameters``.
NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
#: Keywords whose value is a schema, or a list or map of schemas.
_SUBSCHEMA = ("items", "additionalItems", "not", "if", "then", "else", "contains")
_SUBSCHEMAS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")


def tool_constraint(use: ToolUse, fmt: ToolFormat) -> TagsConstraint:
    """The grammar of ``use``'s calls in ``fmt``."""
    tags = [
        Tag(
            begin=fmt.tag_begin(tool.function.name),
            json_schema=closed(tool.function.parameters or NO_ARGUMENTS),
            end=fmt.end,
        )
        for tool in use.offered()
    ]
    named = use.mode == "function"
    return TagsConstraint(
        trigger=fmt.trigger,
        tags=tags,
        required=use.mode != "auto",
        parallel=use.parallel and not named,
        param="tools",
    )


def closed(schema: Any) -> Any:
    """``schema`` with every object that lists its properties closed to others.

    As xgrammar's strict mode and OpenAI's strict tools do: a function takes the arguments it
    declares. A sampling model allowed extra keys may write them forever.
    """
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    for key in _SUBSCHEMA + _SUBSCHEMAS:
        if key in out:
            out[key] = closed(out[key])
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: closed(sub) for name, sub in out[key].items()}
    return out
