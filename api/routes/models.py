"""``/v1/models``: the models that have at least one live worker."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from api.fleet import live_worker_counts
from api.services import services
from shared.errors import ModelNotFound, ServiceUnavailable
from shared.models import ModelSpec

bp = Blueprint("models", __name__, url_prefix="/v1")


def _card(spec: ModelSpec, workers: int) -> dict[str, Any]:
    return {
        "id": spec.name,
        "object": "model",
        "created": 0,
        "owned_by": "modelyard",
        "kind": spec.kind.value,
        "aliases": list(spec.aliases),
        "context_length": spec.context_length,
        "workers": workers,
    }


@bp.get("/models")
def list_models():
    svc = services()
    counts = live_worker_counts(svc.redis, list(svc.catalog))
    data = [_card(spec, counts[spec.name]) for spec in svc.catalog if counts[spec.name]]
    return jsonify({"object": "list", "data": data})


@bp.get("/models/<path:model_id>")
def get_model(model_id: str):
    svc = services()
    spec = svc.catalog.resolve(model_id)
    if spec is None:
        raise ModelNotFound(f"The model '{model_id}' does not exist", param="model")
    workers = live_worker_counts(svc.redis, [spec])[spec.name]
    if not workers:
        raise ServiceUnavailable(f"The model '{spec.name}' has no live worker", retry_after=5)
    return jsonify(_card(spec, workers))
