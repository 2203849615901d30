"""Endpoints only other servers' clients call: FastChat's embeddings paths, DB-GPT's relevance.

Each one validates and runs its request with the views of :mod:`api.routes.pooling`; only the
request path or the response shape differs.
"""

from __future__ import annotations

from flask import Blueprint, jsonify

from api.routes import pooling
from api.routes.common import json_body

bp = Blueprint("compat", __name__, url_prefix="/v1")

# FastChat's older name for /v1/embeddings: the same view.
bp.add_url_rule("/create_embeddings", view_func=pooling.embeddings, methods=["POST"])


@bp.post("/engines/<path:model>/embeddings")
def engine_embeddings(model: str):
    """The pre-1.0 openai SDK's path when called with ``engine=``: the model is in the path.

    The path names the model even when the body names one too.
    """
    body = json_body()
    if isinstance(body, dict):
        body = {**body, "model": model}
    return pooling.embed(body)


@bp.post("/beta/relevance")
def relevance():
    """DB-GPT's rerank API: ``{model, query, documents}`` → one score per document, in their order."""
    req, _, result = pooling.score(json_body())
    return jsonify(
        {
            "object": "list",
            "model": req.model,
            "data": result.scores,
            "usage": {
                "prompt_tokens": result.usage.prompt_tokens,
                "total_tokens": result.usage.total_tokens,
            },
        }
    )
