"""``/metrics``: Prometheus text format (docs/endpoints.md lists the names)."""

from __future__ import annotations

from flask import Blueprint, Response

from api.metrics import CONTENT_TYPE, app_metrics

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics():
    """This process's request metrics, and the queues, workers and engines read from Redis now."""
    return Response(app_metrics().exposition(), headers={"Content-Type": CONTENT_TYPE})
