"""``/v1/models``: the models that have at least one live worker."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from api.fleet import live_worker_counts, model_cards
from api.services import services
from shared.catalog import ModelSpec
from shared.errors import ModelNotFound, ServiceUnavailable
from shared.status import ModelCard

bp = Blueprint("models", __name__, url_prefix="/v1")


def _card(spec: ModelSpec, workers: int, card: ModelCard) -> dict[str, Any]:
    return {
        "id": spec.name,
        "object": "model",
        "created": card.created or 0,
        "owned_by": "modelyard",
        "kind": spec.kind.value,
        "aliases": list(spec.aliases),
        "context_length": spec.context_length,
        "workers": workers,
        # Whether chat requests may carry tools, and the format the model's calls are parsed in.
        "tools": card.tool_parser is not None,
        "tool_parser": card.tool_parser,
    }


@bp.get("/models")
def list_models():
    svc = services()
    counts = live_worker_counts(svc.redis, list(svc.catalog))
    live = [spec for spec in svc.catalog if counts[spec.name]]
    cards = model_cards(svc.redis, live)
    data = [_card(spec, counts[spec.name], cards.get(spec.name, ModelCard())) for spec in live]
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
    return jsonify(_card(spec, workers, model_cards(svc.redis, [spec]).get(spec.name, ModelCard())))
