"""What every request schema shares."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidatorFunctionWrapHandler

from shared.errors import InvalidRequest
from shared.jobs import TOKEN_ID_MAX

log = logging.getLogger(__name__)

#: Largest seed torch accepts, and the bounds OpenAI documents for integer fields.
INT64_MAX = 2**63 - 1


#: Largest token id a request may name.

TokenIds = Annotated[list[Annotated[int, Field(ge=0, le=TOKEN_ID_MAX)]], Field(min_length=1)]


def text_or_tokens(limit: int) -> Any:
    """OpenAI's four shapes of a prompt or an input: text, texts, token ids, lists of token ids."""
    return (
        str
        | Annotated[list[str], Field(min_length=1, max_length=limit)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=limit)]
    )


def check_text_or_tokens(
    value: object, handler: ValidatorFunctionWrapHandler, field: str, limit: int
) -> object:
    """Validate a :func:`text_or_tokens` field with one clear message: the union's own errors
    describe only its first member ("should be a valid string")."""
    try:
        return handler(value)
    except ValidationError as exc:
        raise ValueError(
            f"{field} must be a string, a list of strings, a list of token ids (integers >= 0) or a "
            f"list of such lists, none of them empty, at most {limit} of them"
        ) from exc


def as_items(value: str | list) -> list[str | list[int]]:
    """One item per prompt or input, whichever :func:`text_or_tokens` shape the client sent."""
    if isinstance(value, str):
        return [value]
    if isinstance(value[0], int):
        return [list(value)]
    return list(value)


class BodyModel(BaseModel):
    """Base of request bodies and the objects inside them.

    Types are strict, as JSON has them: ``"16"`` or ``true`` is not an integer, ``"yes"`` not a
    boolean, ``1.5`` not an integer (an integer is a number, though). Unknown fields are accepted
    and ignored (clients send extras).
    """

    model_config = ConfigDict(extra="allow", strict=True)


class RequestModel(BodyModel):
    """Base of request bodies."""

    model: str = Field(min_length=1)
    #: vLLM's priority (lower is sooner) and OpenAI's service tier: the job's band (api/priority.py).
    priority: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    service_tier: str | None = None


#: Names pydantic puts in an error location for the member of a union, not for a field.
_TYPE_TAGS = {"str", "int", "float", "bool", "bytes", "none", "list", "dict"}


def _is_field(part: str | int) -> bool:
    if isinstance(part, int):
        return True
    return part not in _TYPE_TAGS and not part[:1].isupper() and "[" not in part and "-" not in part


def parse_body(schema: type[RequestModel], body: Any) -> Any:
    """Validate a JSON body, raising :class:`InvalidRequest` that names the first bad parameter."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        request = schema.model_validate(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        param = ".".join(str(part) for part in first["loc"] if _is_field(part))
        message = first["msg"]
        if first["type"] == "missing":
            raise InvalidRequest(
                f"missing required parameter: {param!r}", param=param, code="missing_required_parameter"
            ) from exc
        raise InvalidRequest(f"invalid value for {param!r}: {message}", param=param) from exc
    if request.model_extra:
        log.debug("ignoring unknown parameters: %s", sorted(request.model_extra))
    return request


def reject_unsupported(request: BaseModel, defaults: dict[str, Any]) -> None:
    """Refuse parameters modelyard does not implement yet, unless they carry their neutral value.

    Silently ignoring e.g. ``tools`` would return something the client did not ask for.
    """
    extra = request.model_extra or {}
    for name, neutral in defaults.items():
        value = extra.get(name, neutral)
        if value not in (neutral, None) and value != [] and value != {}:
            raise InvalidRequest(
                f"parameter {name!r} is not supported", param=name, code="unsupported_parameter"
            )
