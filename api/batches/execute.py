"""One batch line run as the request it describes: the endpoint's own view, in a request context of
its own, so a line is validated, queued and answered exactly as the same request sent over HTTP
(its errors too, through the app's error handlers) — only in the ``batch`` band."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Flask, g

from api.batches.lines import Line
from api.disconnect import GONE_ENVIRON_KEY
from api.priority import HEADER as PRIORITY_HEADER


@functools.cache
def views() -> dict[str, Callable[[], Any]]:
    """The view serving each endpoint a batch may name (api/batches/lines.py ENDPOINTS)."""
    from api.routes import generation, pooling, responses  # the routes import the services, and these

    return {
        "/v1/chat/completions": generation.chat_completions,
        "/v1/completions": generation.completions,
        "/v1/embeddings": pooling.embeddings,
        "/v1/rerank": pooling.rerank,
        "/v1/responses": responses.create_response,
    }


#: Body fields a batch decides itself: its lines run in the batch band and return whole bodies.
_BATCH_OWNED = ("priority", "service_tier")
#: The client address a batch line's rate limits and lane are counted under.
BATCH_CLIENT = "batch"
#: Statuses after which a line is sent again (a full queue, a job cancelled as its runner stopped,
#: no live worker yet, Redis away, a lost worker, its deadline): a batch waits them out, until it
#: expires.
RETRYABLE = frozenset({429, 499, 503, 504})


@dataclass
class Outcome:
    status: int
    body: Any
    request_id: str | None


def run_line(app: Flask, endpoint: str, line: Line, timeout: float, gone: Callable[[], bool]) -> Outcome:
    """Run ``line`` through ``endpoint``'s view; ``gone`` True stops it (its job is cancelled)."""
    body = {k: v for k, v in line.body.items() if k not in _BATCH_OWNED}
    if body.get("stream") or body.get("background"):
        field = "stream" if body.get("stream") else "background"
        error = {
            "message": f"{field} is not supported in a batch: its lines return whole responses",
            "type": "invalid_request_error",
            "param": field,
            "code": "invalid_value",
        }
        return Outcome(400, {"error": error}, None)
    headers = {PRIORITY_HEADER: "batch", "X-Request-Timeout": f"{max(1, math.floor(timeout))}"}
    with app.test_request_context(
        endpoint,
        method="POST",
        data=json.dumps(body),
        content_type="application/json",
        headers=headers,
        environ_base={"REMOTE_ADDR": BATCH_CLIENT, GONE_ENVIRON_KEY: gone},
    ):
        try:
            response = app.make_response(views()[endpoint]())
        except Exception as exc:  # the app's handlers make it OpenAI's error JSON, as over HTTP
            response = app.make_response(app.handle_user_exception(exc))
        return Outcome(response.status_code, response.get_json(silent=True), g.get("job_id"))


def output_line(line: Line, outcome: Outcome) -> dict[str, Any]:
    """The output (2xx) or error file line of a line's outcome, in OpenAI's shape."""
    request_id = outcome.request_id or f"req_{line.number}"
    error = None
    if not 200 <= outcome.status < 300:
        body = (outcome.body.get("error") if isinstance(outcome.body, dict) else None) or {}
        error = {"code": body.get("code"), "message": body.get("message")}
    return {
        "id": f"batch_req_{request_id}",
        "custom_id": line.custom_id,
        "response": {"status_code": outcome.status, "request_id": request_id, "body": outcome.body},
        "error": error,
    }


def expired_line(line: Line) -> dict[str, Any]:
    """The error file line of a line the batch did not reach before it expired."""
    return {
        "id": f"batch_req_{line.number}",
        "custom_id": line.custom_id,
        "response": None,
        "error": {"code": "batch_expired", "message": "the batch expired before this request ran"},
    }
