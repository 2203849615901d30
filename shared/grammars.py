"""The grammar of a constraint spec, built and checked without a tokenizer (llguidance's dialect).

The API checks every spec here before it queues a job (a 400 naming the request parameter); the
worker's llguidance backend (``workers.constraints``) compiles the same text against a model's
vocabulary. Both processes use one definition, and the API needs no worker code for it.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import llguidance
from llguidance import LLMatcher, LLParserLimits

from shared.errors import InvalidRequest
from shared.jobs import (
    MAX_CONSTRAINT_BYTES,
    ChoiceConstraint,
    Constraint,
    GrammarConstraint,
    JsonSchemaConstraint,
    RegexConstraint,
    TagsConstraint,
)

#: llguidance's default limits (grammar size 500k symbols, 1M initial and 200k per-step lexer fuel,
#: 50k Earley items per step, 250k lexer states), with terse errors: verbose ones quote the grammar.
LIMITS = LLParserLimits(verbose_errors=False)
#: JSON without whitespace between tokens (a small model could pad with it forever) and ``oneOf``
#: taken as ``anyOf`` (what JSON Schemas written for OpenAI mean by it).
JSON_OPTIONS = {"whitespace_flexible": False, "coerce_one_of": True}
#: Free text around tags: anything.
_TEXT = r"TEXT: /(.|\n)*/"
_SEPARATOR = r"SEP: /[ \t\r\n]+/"


def check(spec: Constraint) -> None:
    """Refuse a spec llguidance cannot compile (:class:`InvalidRequest` naming ``spec.param``)."""
    error = LLMatcher.validate_grammar(grammar_text(spec, None), limits=LIMITS)
    if error and not error.startswith("WARNING"):
        raise refused(spec, error)


def grammar_text(spec: Constraint, special_id: Callable[[str], int | None] | None) -> str:
    """llguidance's grammar for ``spec``; ``special_id`` finds special tokens (None: no tokenizer,
    every marker is text). Raises :class:`InvalidRequest` for a spec too large or malformed."""
    size = len(spec.model_dump_json())
    if size > MAX_CONSTRAINT_BYTES:
        raise InvalidRequest(
            f"{spec.param} is {size} bytes as JSON, over the {MAX_CONSTRAINT_BYTES} this server compiles",
            param=spec.param,
        )
    try:
        if isinstance(spec, JsonSchemaConstraint):
            return LLMatcher.grammar_from_json_schema(spec.json_schema, defaults=JSON_OPTIONS)
        if isinstance(spec, RegexConstraint):
            return LLMatcher.grammar_from_regex(spec.pattern)
        if isinstance(spec, ChoiceConstraint):
            return LLMatcher.grammar_from_lark("start: " + " | ".join(_literal(c) for c in spec.choices))
        if isinstance(spec, GrammarConstraint):
            return llguidance.grammar_from("grammar", spec.grammar)  # Lark, or GBNF turned into Lark
        return LLMatcher.grammar_from_lark(_tags_lark(spec, special_id))
    except ValueError as exc:
        raise refused(spec, str(exc)) from exc


def _tags_lark(spec: TagsConstraint, special_id: Callable[[str], int | None] | None) -> str:
    """Lark for tag segments: ``begin`` (opened by ``trigger``), JSON of the tag's schema, ``end``.

    A trigger that is one of the model's special tokens is matched as that token, else as text; in
    the lazy form free text runs until the trigger appears, and from there a whole tag must follow.
    """
    token = special_id(spec.trigger) if special_id is not None else None
    trigger = f"<[{token}]>" if token is not None else _literal(spec.trigger)
    lines = ["%llguidance {}"]
    for i, tag in enumerate(spec.tags):
        if not tag.begin.startswith(spec.trigger):
            raise InvalidRequest(
                f"{spec.param}: tag {i}'s begin {tag.begin[:40]!r} does not start with the trigger",
                param=spec.param,
            )
        schema = json.dumps({**tag.json_schema, "x-guidance": JSON_OPTIONS})
        parts = [_literal(tag.begin[len(spec.trigger) :]), f"%json {schema}", _literal(tag.end)]
        lines.append(f"tag_{i}: " + " ".join(part for part in parts if part))
    tags = " | ".join(f"tag_{i}" for i in range(len(spec.tags)))
    if spec.required:  # tags only, from the first token
        lines += [f"call: {trigger} ({tags})", "start: call (SEP call)*" if spec.parallel else "start: call"]
        lines.append(_SEPARATOR)
    else:
        if token is None:  # a lazy lexeme: the text ends where the trigger first appears
            lines += [f"opening[lazy]: TEXT {trigger}", f"call: opening ({tags})"]
        else:  # a special token cannot appear inside text
            lines.append(f"call: TEXT {trigger} ({tags})")
        lines += ["start: call* TEXT" if spec.parallel else "start: call? TEXT", _TEXT]
    return "\n".join(lines)


def _literal(text: str) -> str:
    """A Lark string literal (JSON's escapes are Lark's); empty text gives nothing."""
    return json.dumps(text) if text else ""


def message(error: str) -> str:
    """llguidance's error without its marker of left-out details, and not too long."""
    return error.replace("<non-verbose/>", "").strip()[:500]


def refused(spec: Constraint, error: str) -> InvalidRequest:
    """The 400 for a spec llguidance refused, naming the request parameter it came from."""
    return InvalidRequest(f"{spec.param} cannot be compiled: {message(error)}", param=spec.param)
