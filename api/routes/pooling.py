"""``/v1/embeddings`` and ``/v1/rerank``."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from api import responses
from api.disconnect import client_gone_probe
from api.routes.common import envelope, json_body
from api.schemas.base import parse_body
from api.schemas.pooling import EmbeddingRequest, RerankRequest
from api.services import services
from shared.jobs import EmbedJob, RerankJob
from shared.models import ModelKind

bp = Blueprint("pooling", __name__)


def _run(job):
    dispatcher = services().dispatcher
    ticket = dispatcher.submit(job)
    try:
        return dispatcher.result(ticket, client_gone_probe(request.environ))
    finally:
        dispatcher.close(ticket)


@bp.post("/v1/embeddings")
def embeddings():
    req: EmbeddingRequest = parse_body(EmbeddingRequest, json_body())
    inputs = req.inputs
    spec = services().dispatcher.resolve(req.model, ModelKind.EMBEDDING)
    result = _run(EmbedJob(**envelope(spec), inputs=inputs))
    return jsonify(responses.embeddings(req.model, result, req.encoding_format))


@bp.post("/v1/rerank")
@bp.post("/rerank")
def rerank():
    req: RerankRequest = parse_body(RerankRequest, json_body())
    spec = services().dispatcher.resolve(req.model, ModelKind.RERANK)
    documents = req.texts
    job = RerankJob(**envelope(spec), query=req.query, documents=documents)
    result = _run(job)
    return jsonify(
        responses.rerank(job.job_id, req.model, result, documents, req.top_n, req.return_documents)
    )
