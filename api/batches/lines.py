"""An input file's request lines: ``{"custom_id", "method": "POST", "url", "body"}``, one per line.

:func:`check` reads the whole file once when a batch is validated and returns OpenAI's per-line
errors (the batch fails if there is any); :func:`read` then streams the lines to run, so a file of
any size is never held in memory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The endpoints a batch may run (OpenAI's, and rerank).
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank", "/v1/responses")
#: Line errors reported, at most: a file with more bad lines fails with the first ones.
MAX_ERRORS = 100
#: Longest ``custom_id``.
MAX_CUSTOM_ID = 512


@dataclass(frozen=True)
class Line:
    number: int  # 1-based, as OpenAI's errors count them
    custom_id: str
    body: dict[str, Any]


@dataclass
class Checked:
    lines: int
    errors: list[dict[str, Any]]
    #: The model every line names, if they all name one (OpenAI's batch ``model``).
    model: str | None


def _error(code: str, message: str, line: int, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _parse(raw: bytes, number: int, endpoint: str) -> Line | dict[str, Any]:
    """The line, or its error."""
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return _error("invalid_json_line", f"line {number} is not valid JSON: {exc}", number)
    if not isinstance(value, dict):
        return _error("invalid_json_line", f"line {number} is not a JSON object", number)
    custom_id = value.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id or len(custom_id) > MAX_CUSTOM_ID:
        message = f"custom_id must be a non-empty string of at most {MAX_CUSTOM_ID} characters"
        return _error("missing_required_parameter", message, number, "custom_id")
    if value.get("method") != "POST":
        return _error("invalid_request", "method must be POST", number, "method")
    if value.get("url") != endpoint:
        message = f"url {value.get('url')!r} is not the batch's endpoint {endpoint!r}"
        return _error("mismatched_endpoint", message, number, "url")
    body = value.get("body")
    if not isinstance(body, dict):
        return _error("missing_required_parameter", "body must be a JSON object", number, "body")
    return Line(number, custom_id, body)


#: Lines read between two yields of the reading thread.
_YIELD_EVERY = 256


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number % _YIELD_EVERY == 0:
                # Under gevent (bin/api) the runner shares the API's event loop: a long file read
                # in one go would hold every request of the process meanwhile.
                time.sleep(0)
            if raw.strip():
                yield number, raw


def check(path: Path, endpoint: str, max_lines: int) -> Checked:
    """Every line's errors (at most :data:`MAX_ERRORS`), a custom_id used twice among them."""
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    models: set[object] = set()
    count = 0
    for number, raw in _raw_lines(path):
        count += 1
        parsed = _parse(raw, number, endpoint)
        if isinstance(parsed, Line):
            if parsed.custom_id in seen:
                message = f"custom_id {parsed.custom_id!r} is used by an earlier line"
                parsed = _error("duplicate_custom_id", message, number, "custom_id")
            else:
                seen.add(parsed.custom_id)
                models.add(parsed.body.get("model"))
        if isinstance(parsed, dict) and len(errors) < MAX_ERRORS:
            errors.append(parsed)
    if count == 0:
        errors.append(_error("empty_file", "the input file has no request lines", 0))
    if count > max_lines:
        message = f"the input file has {count} request lines; a batch may have at most {max_lines}"
        errors.insert(0, _error("too_many_requests", message, 0))
    model = next(iter(models)) if len(models) == 1 else None
    return Checked(count, errors, model if isinstance(model, str) else None)


def read(path: Path, endpoint: str) -> Iterator[Line]:
    """The lines of a checked file, in order."""
    for number, raw in _raw_lines(path):
        parsed = _parse(raw, number, endpoint)
        if isinstance(parsed, Line):
            yield parsed


def count_lines(path: Path) -> int:
    """Request (non-blank) lines of a file, read in blocks: the upload's line limit."""
    return sum(1 for _ in _raw_lines(path))
