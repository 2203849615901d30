"""Helpers the endpoint modules share."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import orjson
from flask import Response, current_app, g, request

from api import observe
from api.disconnect import client_gone_probe
from api.json_parsing import parse_json
from api.middleware import RequestContext
from api.priority import request_band
from api.ratelimit import subject_of_request
from api.schemas.base import RequestModel
from api.services import services
from shared.catalog import ModelKind, ModelSpec
from shared.errors import InvalidRequest
from shared.priority import lane_of


def json_body() -> object:
    """The request's JSON body, whatever its Content-Type (``curl -d`` sends form encoding).

    Strict and bounded (:mod:`api.json_parsing`): a 400 for what ``json.loads`` would choke on.
    """
    return parse_json(request.get_data(cache=True))


def vectors_response(payload: dict[str, Any]) -> Response:
    """A JSON response of numbers (embeddings, scores), encoded by orjson: MiniLM's 384 floats take
    ~10 us there against ~220 us through Flask's ``json`` (the finite floats of a model's output
    encode the same)."""
    return current_app.response_class(
        orjson.dumps(payload, option=orjson.OPT_APPEND_NEWLINE), mimetype="application/json"
    )


def resolve_model(name: str, kind: ModelKind) -> ModelSpec:
    """The model ``name`` if it exists and serves ``kind`` (else 404 or 400).

    A configured name goes into the request's record even when it is the wrong kind: only
    configured names become metric labels, so they stay bounded.
    """
    dispatcher = services().dispatcher
    spec, record = dispatcher.catalog.resolve(name), observe.current()
    if spec is not None and record is not None:
        record.model = spec.name
    return dispatcher.resolve(name, kind)


def request_context(client_gone: Callable[[], bool] | None = None) -> RequestContext:
    """The current request as the dispatcher's middleware sees it: its record and its client.

    ``client_gone`` defaults to a probe of the request's socket (a WebSocket passes its own).
    """
    return RequestContext(
        client_gone=client_gone or client_gone_probe(request.environ),
        record=observe.current(),
        rate_subject=subject_of_request(),
    )


def envelope(spec: ModelSpec, req: RequestModel | None = None) -> dict[str, Any]:
    """What every job carries: a new id, its model, this process's reply channel, its deadline,
    its band (what ``req`` or the ``X-Priority`` header asks, as far as its key may) and its
    client's lane (docs/scheduling.md).

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
    band = request_band(
        getattr(req, "priority", None), getattr(req, "service_tier", None), svc.settings.priority_high_keys
    )
    svc.limiter.admit(subject)
    job_id = svc.dispatcher.new_job_id()
    g.job_id = job_id
    g.band = band
    return {
        "job_id": job_id,
        "model": spec.name,
        "reply_to": svc.router.channel,
        "deadline": time.time() + budget,
        "owner": subject if svc.settings.api_keys else None,
        "band": band,
        "lane": lane_of(subject),
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


def int_arg(name: str, default: int, low: int, high: int) -> int:
    """The query argument ``name`` as an integer in [low, high] (``default`` when absent), else 400."""
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be an integer between {low} and {high}", param=name)
    return value


def order_arg() -> str:
    """The ``order`` query argument of a list endpoint: ``asc``, or ``desc`` (the default), else 400."""
    order = request.args.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order must be 'asc' or 'desc'", param="order")
    return order


def owner_of_request() -> str | None:
    """Who owns what this request creates (a file, a batch): its hashed key; None without keys."""
    return subject_of_request() if services().settings.api_keys else None
