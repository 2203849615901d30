"""``/v1/embeddings`` and ``/v1/rerank``."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from api import responses
from api.disconnect import client_gone_probe
from api.routes.common import deadline, json_body
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
    svc = services()
    spec = svc.dispatcher.resolve(req.model, ModelKind.EMBEDDING)
    result = _run(
        EmbedJob(
            job_id=svc.dispatcher.new_job_id(),
            model=spec.name,
            reply_to=svc.router.channel,
            deadline=deadline(),
            inputs=inputs,
        )
    )
    return jsonify(responses.embeddings(req.model, result, req.encoding_format))


@bp.post("/v1/rerank")
@bp.post("/rerank")
def rerank():
    req: RerankRequest = parse_body(RerankRequest, json_body())
    svc = services()
    spec = svc.dispatcher.resolve(req.model, ModelKind.RERANK)
    documents = req.texts
    job_id = svc.dispatcher.new_job_id()
    result = _run(
        RerankJob(
            job_id=job_id,
            model=spec.name,
            reply_to=svc.router.channel,
            deadline=deadline(),
            query=req.query,
            documents=documents,
        )
    )
    return jsonify(responses.rerank(job_id, req.model, result, documents, req.top_n, req.return_documents))
