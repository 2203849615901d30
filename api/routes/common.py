"""Helpers the endpoint modules share."""

from __future__ import annotations

import json
import time
from typing import Any

from flask import request

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
    """What every job carries: a new id, its model, this process's reply channel, its deadline."""
    svc = services()
    return {
        "job_id": svc.dispatcher.new_job_id(),
        "model": spec.name,
        "reply_to": svc.router.channel,
        "deadline": time.time() + svc.settings.request_timeout,
    }
