"""Strict, bounded JSON for request bodies and WebSocket messages.

``json.loads`` alone lets one client's body cost a 500 or the server's time: an integer of thousands
of digits (``int()`` refuses past 4300, and converting is quadratic below that), nesting deeper than
the parser's recursion limit, ``NaN``/``Infinity`` (not JSON), and ``\\ud800``-style escapes of
unpaired UTF-16 surrogates, which no tokenizer can encode. Each is an :class:`InvalidRequest` here,
before anything is queued.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate

from shared.errors import InvalidRequest

#: Most nested arrays and objects a body may hold; OpenAI bodies need fewer than 10, JSON Schemas
#: in ``tools`` or ``response_format`` a few more.
MAX_DEPTH = 64
#: Most digits an integer literal may have (an int64 has 19).
MAX_INT_DIGITS = 100

# The scans below run on UTF-8 bytes, where they are C loops: a 1.2 MB body of token ids costs ~4 ms
# on top of its ~17 ms parse.
#: A JSON string, escapes included (the unrolled form matches long strings fast).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
_DIGITS_AS_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)
_LONG_DIGITS = b"0" * (MAX_INT_DIGITS + 1)
#: A ``\\u`` escape of a surrogate, paired or not: only bodies that have one are searched for lone ones.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
#: A surrogate code point left in a parsed string: the parser joins valid pairs into one character.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _parse_int(literal: str) -> int:
    if len(literal) - literal.startswith("-") > MAX_INT_DIGITS:
        raise InvalidRequest(f"an integer literal has more than {MAX_INT_DIGITS} digits")
    return int(literal)


def _parse_constant(name: str) -> float:
    raise InvalidRequest(f"{name} is not a JSON value")


_DECODER = json.JSONDecoder(parse_constant=_parse_constant)
#: Checks every integer's length in Python: ~3x slower, so only for bodies with a long run of digits.
_BOUNDED_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_constant=_parse_constant)


def parse_json(data: bytes | str, what: str = "request body") -> object:
    """The JSON value of ``data``; raises :class:`InvalidRequest` naming ``what`` and the problem."""
    if isinstance(data, str):
        text, raw = data, data.encode("utf-8", "surrogatepass")
    else:
        encoding = json.detect_encoding(data)
        try:
            # Strict (json.loads itself lets UTF-8-encoded surrogates through).
            text = data.decode(encoding)
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"invalid Unicode in the {what}: {exc}") from exc
        raw = data if encoding.startswith("utf-8") else text.encode("utf-8", "surrogatepass")
    _check_depth(raw, what)
    decoder = _BOUNDED_DECODER if _LONG_DIGITS in raw.translate(_DIGITS_AS_ZERO) else _DECODER
    try:
        value = decoder.decode(text)
    except ValueError as exc:  # JSONDecodeError, or int()'s own digit limit
        raise InvalidRequest(f"the {what} is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # not reached past _check_depth; kept as a guard
        raise InvalidRequest(f"the {what} is nested too deeply") from exc
    if _SURROGATE_ESCAPE.search(raw) or (not text.isascii() and _SURROGATE.search(text)):
        _check_unicode(value, what)
    return value


def _check_depth(raw: bytes, what: str) -> None:
    # Fewer brackets than the limit, even counting those inside strings: nothing to measure.
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if brackets and max(accumulate(map(_STEP.__getitem__, brackets))) > MAX_DEPTH:
        raise InvalidRequest(
            f"the {what} is nested too deeply: at most {MAX_DEPTH} levels of arrays and objects"
        )


def _check_unicode(value: object, what: str) -> None:
    """Refuse a string (or key) with a lone surrogate, naming where it is."""
    stack: list[tuple[object, tuple[str, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            texts = [(item, path)]
        elif isinstance(item, dict):
            texts = [(key, path) for key in item]
            stack.extend((v, (*path, k)) for k, v in item.items())
        elif isinstance(item, list):
            texts = []
            stack.extend((v, (*path, str(i))) for i, v in enumerate(item))
        else:
            continue
        for text, where in texts:
            match = _SURROGATE.search(text)
            if match is not None:
                param = ".".join(where) or None
                place = f"{param!r}" if param else f"the {what}"
                raise InvalidRequest(
                    f"invalid Unicode in {place}: \\u{ord(match.group()):04x} is an unpaired UTF-16 "
                    "surrogate (escape characters outside the BMP as a pair, or send UTF-8)",
                    param=param,
                )
