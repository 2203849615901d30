"""Helpers the endpoint modules share."""

from __future__ import annotations

import json
import time

from flask import request

from api.services import services
from shared.errors import InvalidRequest


def json_body() -> object:
    """The request's JSON body, whatever its Content-Type (``curl -d`` sends form encoding)."""
    data = request.get_data(cache=True)
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from exc


def deadline() -> float:
    """Epoch second by which this request must be answered."""
    return time.time() + services().settings.request_timeout
