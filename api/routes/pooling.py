"""``/v1/embeddings`` and ``/v1/rerank``."""

from __future__ import annotations

from flask import Blueprint, g, jsonify, request

from api import observe, responses
from api.disconnect import client_gone_probe
from api.routes.common import envelope, json_body
from api.schemas.base import parse_body
from api.schemas.pooling import EmbeddingRequest, RerankRequest
from api.services import services
from shared.jobs import EmbedJob, RerankJob, RerankResult
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
    return embed(json_body())


def embed(body: object):
    """Validate an embeddings body and run its job: OpenAI's response (compat routes use it too)."""
    req: EmbeddingRequest = parse_body(EmbeddingRequest, body)
    inputs = req.inputs
    svc = services()
    spec = svc.dispatcher.resolve(req.model, ModelKind.EMBEDDING)
    job = EmbedJob(**envelope(spec), inputs=inputs, dimensions=req.dimensions)
    job_id, result = svc.coalescer.embed(job, spec, client_gone_probe(request.environ))
    if job_id != job.job_id:  # it ran inside a coalesced job: point at that one
        g.job_id = job_id
        record = observe.current()
        if record is not None:
            record.job_id, record.prompt_tokens = job_id, result.usage.prompt_tokens
    return jsonify(responses.embeddings(req.model, result, req.encoding_format))


@bp.post("/v1/rerank")
@bp.post("/rerank")
def rerank():
    req, job, result = score(json_body())
    if req.tei:  # TEI's request shape gets TEI's response: a bare list, best first
        return jsonify(responses.tei_rerank(result, job.documents, req.top_n, req.return_text))
    return jsonify(
        responses.rerank(job.job_id, req.model, result, job.documents, req.top_n, req.return_documents)
    )


def score(body: object) -> tuple[RerankRequest, RerankJob, RerankResult]:
    """Validate a rerank body and run its job: the request, the job and its scores in document order."""
    req: RerankRequest = parse_body(RerankRequest, body)
    documents = req.candidates  # a 400 for the body comes before a 503 for the model
    spec = services().dispatcher.resolve(req.model, ModelKind.RERANK)
    job = RerankJob(**envelope(spec), query=req.query, documents=documents, raw_scores=req.raw_scores)
    return req, job, _run(job)
