"""Helpers the endpoint modules share."""

from __future__ import annotations

import json
import math
import time
from typing import Any

from flask import g, request

from api.ratelimit import subject_of_request
from api.services import services
from shared.errors import InvalidRequest
from shared.models import ModelSpec


def json_body() -> object:
    """The request's JSON body, whatever its Content-Type (``curl -d`` sends form encoding)."""
    data = request.get_data(cache=True)
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from exc


def envelope(spec: ModelSpec) -> dict[str, Any]:
    """What every job carries: a new id, its model, this process's reply channel, its deadline.

    The deadline is the server's ``request_timeout``, or less if the client asks for less with an
    ``X-Request-Timeout`` header (seconds). Not a body field: openai<1 clients put their own
    client-side ``timeout`` into the body.
    """
    svc = services()
    budget = svc.settings.request_timeout
    asked = _header_timeout()
    if asked is not None:
        budget = min(budget, asked)
    subject = subject_of_request()
    svc.limiter.admit(subject)
    job_id = svc.dispatcher.new_job_id()
    g.job_id = job_id
    return {
        "job_id": job_id,
        "model": spec.name,
        "reply_to": svc.router.channel,
        "deadline": time.time() + budget,
        "rate_subject": subject if svc.limiter.tpm is not None else None,
    }


def _header_timeout() -> float | None:
    raw = request.headers.get("X-Request-Timeout")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise InvalidRequest(
            "X-Request-Timeout must be a positive number of seconds", param="X-Request-Timeout"
        )
    return value
