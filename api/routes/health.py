"""Liveness and readiness."""

from __future__ import annotations

from flask import Blueprint, jsonify
from redis import RedisError

from api.fleet import live_worker_counts
from api.openapi import openapi_document
from api.services import services

bp = Blueprint("health", __name__)


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI document (no authentication, like /health)."""
    return jsonify(openapi_document())


@bp.get("/health/live")
def live():
    """The API process answers; says nothing about Redis or workers."""
    return jsonify({"status": "ok"})


@bp.get("/health")
def ready():
    """Ready when Redis answers; lists live workers per model. 503 while Redis is down."""
    svc = services()
    try:
        svc.redis.ping()
        workers = live_worker_counts(svc.redis, list(svc.catalog))
    except RedisError as exc:
        response = jsonify({"status": "unavailable", "redis": "down", "detail": str(exc)})
        response.status_code = 503
        response.headers["Retry-After"] = "2"
        return response
    return jsonify({"status": "ok", "redis": "up", "models": workers})
