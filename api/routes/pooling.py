"""``/v1/embeddings`` and ``/v1/rerank``."""

from __future__ import annotations

from flask import Blueprint, g, jsonify

from api import openai_objects
from api.routes.common import envelope, json_body, request_context, resolve_model, vectors_response
from api.schemas.base import parse_body
from api.schemas.pooling import EmbeddingRequest, RerankRequest
from api.services import services
from shared.catalog import ModelKind
from shared.jobs import EmbedJob, RerankJob, RerankResult

bp = Blueprint("pooling", __name__)


@bp.post("/v1/embeddings")
def embeddings():
    return embed(json_body())


def embed(body: object):
    """Validate an embeddings body and run its job: OpenAI's response (compat routes use it too)."""
    req: EmbeddingRequest = parse_body(EmbeddingRequest, body)
    inputs = req.inputs
    spec = resolve_model(req.model, ModelKind.EMBEDDING)
    job = EmbedJob(**envelope(spec, req), inputs=inputs, dimensions=req.dimensions)
    job_id, result = services().coalescer.embed(job, spec, request_context())
    g.job_id = job_id  # a coalesced job's, when it ran in one
    return vectors_response(openai_objects.embeddings(req.model, result, req.encoding_format))


@bp.post("/v1/rerank")
@bp.post("/rerank")
def rerank():
    req, job, result = score(json_body())
    if req.tei:  # TEI's request shape gets TEI's response: a bare list, best first
        return jsonify(openai_objects.tei_rerank(result, job.documents, req.top_n, req.return_text))
    return vectors_response(
        openai_objects.rerank(job.job_id, req.model, result, job.documents, req.top_n, req.return_documents)
    )


def score(body: object) -> tuple[RerankRequest, RerankJob, RerankResult]:
    """Validate a rerank body and run its job: the request, the job and its scores in document order."""
    req: RerankRequest = parse_body(RerankRequest, body)
    documents = req.candidates  # a 400 for the body comes before a 503 for the model
    spec = resolve_model(req.model, ModelKind.RERANK)
    job = RerankJob(**envelope(spec, req), query=req.query, documents=documents, raw_scores=req.raw_scores)
    with services().dispatcher.run(job, request_context()) as run:
        return req, job, run.wait()
