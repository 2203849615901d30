"""One place that turns every exception into OpenAI's error JSON with the right status."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from redis import RedisError
from werkzeug.exceptions import HTTPException

from shared.connection import PoolExhausted
from shared.errors import (
    InvalidRequest,
    MethodNotAllowed,
    ModelyardError,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    error_for_status,
)

log = logging.getLogger(__name__)

#: Retry-After when this API process had no free Redis connection: a burst passes in about that.
BUSY_RETRY_S = 1

#: Retry-After when Redis cannot be reached: a restart or a failover takes about that.
REDIS_RETRY_S = 2


class RequestTimeout(ModelyardError):
    """The request's body did not arrive in time (see :mod:`api.body_buffer`)."""

    status = 408
    type = "invalid_request_error"
    default_code = "request_timeout"


class ServerBusy(ServiceUnavailable):
    """This API process is overloaded (no Redis connection came free in time); Redis itself is up."""

    default_code = "server_busy"


class RedisUnavailable(ServiceUnavailable):
    """Redis cannot be reached, or this process lost its reply subscription: retry in a moment."""

    default_code = "redis_unavailable"

    def __init__(self, message: str = "Redis is unreachable", *, retry_after: int = REDIS_RETRY_S) -> None:
        super().__init__(message, retry_after=retry_after)


def busy(exc: PoolExhausted) -> ServerBusy:
    """The client's answer to ``exc``: retry in a moment."""
    return ServerBusy(f"the server is busy ({exc}); retry", retry_after=BUSY_RETRY_S)


def error_response(error: ModelyardError):
    response = jsonify(error.to_dict())
    response.status_code = error.status
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(error.retry_after)
    return response


def _from_http(exc: HTTPException) -> ModelyardError:
    code = exc.code or 500
    if code == 404:
        return NotFound(
            "unknown route; see /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/rerank"
        )
    if code == 405:
        return MethodNotAllowed(f"method not allowed: {exc.description}")
    if code == 413:
        return PayloadTooLarge("the request body is larger than the server accepts")
    if code == 400:
        return InvalidRequest(exc.description or "bad request")
    return error_for_status(code, exc.description or exc.name)


def register_error_handlers(app: Flask) -> None:
    """Render every error as ``{"error": {message, type, param, code}}``."""

    @app.errorhandler(ModelyardError)
    def _modelyard(error: ModelyardError):
        return error_response(error)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        return error_response(_from_http(exc))

    @app.errorhandler(PoolExhausted)  # Flask picks the most specific class: this, not RedisError's
    def _busy(exc: PoolExhausted):
        log.warning("Redis pool exhausted: %s", exc)
        return error_response(busy(exc))

    @app.errorhandler(RedisError)
    def _redis(exc: RedisError):
        log.warning("Redis error: %s", exc)
        return error_response(RedisUnavailable())

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error_response(error_for_status(500, "internal server error"))
