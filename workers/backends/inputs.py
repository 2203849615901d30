"""Telling which input a tokenizer could not take, so that its request alone gets a 400.

Jobs can reach a worker from anything that writes to Redis, past the API's checks. A fast tokenizer
refuses a whole batch with one ``TypeError`` when a single text in it cannot be encoded (a lone
surrogate); the batch is then tokenized one input at a time to name the culprit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TypeVar

from shared.errors import InvalidRequest

T = TypeVar("T")
R = TypeVar("R")

_SURROGATE = re.compile("[\ud800-\udfff]")


def unicode_problem(text: str) -> str | None:
    """Why ``text`` is not valid Unicode (it holds a lone UTF-16 surrogate), or None."""
    if text.isascii():
        return None
    match = _SURROGATE.search(text)
    if match is None:
        return None
    return f"\\u{ord(match.group()):04x} at character {match.start()} is an unpaired UTF-16 surrogate"


def invalid_text(param: str, reason: str) -> InvalidRequest:
    """The error for an input the tokenizer cannot take."""
    return InvalidRequest(f"invalid Unicode in {param!r}: {reason}", param=param)


def tokenize_or_blame(
    tokenize: Callable[[list[T]], R],
    items: Sequence[T],
    texts: Callable[[int], Sequence[tuple[str, str]]],
    param: Callable[[int], str],
) -> R:
    """``tokenize(items)``; if it fails, an :class:`InvalidRequest` for the first item that fails alone.

    ``texts(i)`` gives item ``i``'s texts with the request parameter each came from, so that a text
    that is not valid Unicode is named precisely; ``param(i)`` names an item that fails for another
    reason. If every item tokenizes alone, the batch's own error is raised: the fault is not an input's.
    """
    try:
        return tokenize(list(items))
    except Exception as exc:
        batch_error = exc
    for i, item in enumerate(items):
        for name, text in texts(i):
            reason = unicode_problem(text)
            if reason is not None:
                raise invalid_text(name, reason) from batch_error
        try:
            tokenize([item])
        except Exception as exc:
            raise InvalidRequest(
                f"{param(i)!r} cannot be tokenized: {type(exc).__name__}: {exc}", param=param(i)
            ) from exc
    raise batch_error
