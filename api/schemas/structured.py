"""Structured output in request bodies: OpenAI's ``response_format`` and vLLM's ``structured_outputs``.

Both become the job's :data:`shared.jobs.Constraint`, checked by the grammar backend here, without
the model's tokenizer, so a spec it refuses is a 400 naming its parameter before anything is queued.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from api.json_parsing import parse_json
from api.schemas.base import BodyModel, reject_unsupported
from shared import grammars
from shared.errors import InvalidRequest
from shared.jobs import (
    ChoiceConstraint,
    Constraint,
    GrammarConstraint,
    JsonSchemaConstraint,
    RegexConstraint,
)

#: vLLM's older top-level extras: refused, not ignored (ignoring them would return free text).
_LEGACY = {name: None for name in ("guided_json", "guided_regex", "guided_choice", "guided_grammar")}
#: Any JSON object: what ``json_object`` asks for.
ANY_OBJECT: dict[str, Any] = {"type": "object"}


class JsonSchemaFormat(BodyModel):
    """``response_format.json_schema``; ``strict`` is accepted either way: the schema is always enforced."""

    name: str | None = None
    description: str | None = None
    #: ``schema`` in the body (a field of that name would shadow pydantic's own).
    json_schema: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(BodyModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def constraint(self) -> Constraint | None:
        if self.type == "text":
            return None
        if self.type == "json_object":
            return JsonSchemaConstraint(json_schema=ANY_OBJECT, param="response_format")
        if self.json_schema is None:
            raise InvalidRequest(
                "response_format of type 'json_schema' needs a 'json_schema' object with a 'schema'",
                param="response_format.json_schema",
                code="missing_required_parameter",
            )
        return JsonSchemaConstraint(json_schema=self.json_schema.json_schema, param="response_format")


class StructuredOutputs(BodyModel):
    """vLLM's ``structured_outputs`` extra: exactly one of its fields."""

    #: A JSON Schema, as an object or as JSON text (``json`` in the body).
    json_schema: dict[str, Any] | str | None = Field(None, alias="json")
    regex: str | None = None
    choice: list[str] | None = Field(None, min_length=1)
    #: A Lark (llguidance) or GBNF grammar.
    grammar: str | None = None
    json_object: bool | None = None

    def constraint(self) -> Constraint:
        param = "structured_outputs"
        given = [name for name in ("json", "regex", "choice", "grammar", "json_object") if self._given(name)]
        if len(given) != 1:
            raise InvalidRequest(
                f"structured_outputs takes exactly one of json, regex, choice, grammar and json_object, "
                f"not {given or 'none'}",
                param=param,
            )
        if self.regex is not None:
            return RegexConstraint(pattern=self.regex, param=param)
        if self.choice is not None:
            return ChoiceConstraint(choices=self.choice, param=param)
        if self.grammar is not None:
            return GrammarConstraint(grammar=self.grammar, param=param)
        if self.json_object:
            return JsonSchemaConstraint(json_schema=ANY_OBJECT, param=param)
        schema = self.json_schema
        if isinstance(schema, str):  # JSON text
            try:
                schema = parse_json(schema, "structured_outputs.json")
            except InvalidRequest as exc:
                exc.param = "structured_outputs.json"
                raise
            if not isinstance(schema, dict):
                raise InvalidRequest("structured_outputs.json must be a JSON Schema object", param=param)
        return JsonSchemaConstraint(json_schema=schema, param=param)

    def _given(self, name: str) -> bool:
        value = self.json_schema if name == "json" else getattr(self, name)
        return value is not None and value is not False


def request_constraint(
    response_format: ResponseFormat | None,
    structured_outputs: StructuredOutputs | None,
    request: BodyModel,
) -> Constraint | None:
    """The request's output constraint, checked by the grammar backend; None for free text."""
    reject_unsupported(request, _LEGACY)
    spec = response_format.constraint() if response_format is not None else None
    if structured_outputs is not None:
        if spec is not None:
            raise InvalidRequest(
                "response_format and structured_outputs cannot be combined", param="structured_outputs"
            )
        spec = structured_outputs.constraint()
    if spec is not None:
        grammars.check(spec)
    return spec
