"""``/v1/jobs/{id}``: where a request is (queued, at which position, ETA) and cancelling it."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from api.fleet import live_worker_counts, wait_estimate
from api.services import services
from shared.errors import NotFound

bp = Blueprint("jobs", __name__, url_prefix="/v1")

#: Response ids carry an OpenAI-style prefix in front of the job id.
_ID_PREFIXES = ("chatcmpl-", "cmpl-", "rerank-", "embd-")


def _fetch(job_id: str) -> Job:
    for prefix in _ID_PREFIXES:
        job_id = job_id.removeprefix(prefix)
    try:
        return Job.fetch(job_id, connection=services().redis, serializer=JSONSerializer)
    except (NoSuchJobError, ValueError) as exc:  # rq refuses ids with other than [A-Za-z0-9_-]
        raise NotFound(f"no job {job_id!r} (finished jobs are kept a few minutes)", param="id") from exc


def _describe(job: Job) -> dict[str, Any]:
    svc = services()
    status = job.get_status(refresh=False)
    body: dict[str, Any] = {
        "id": job.id,
        "object": "job",
        "model": job.origin,
        "status": status.value if status else None,
        "created_at": job.enqueued_at.timestamp() if job.enqueued_at else None,
        "started_at": job.started_at.timestamp() if job.started_at else None,
        "ended_at": job.ended_at.timestamp() if job.ended_at else None,
        "queue_position": None,
        "eta_seconds": None,
    }
    spec = svc.catalog.resolve(job.origin)
    if status == JobStatus.QUEUED and spec is not None:
        position = svc.dispatcher.queue(spec.name).get_job_position(job.id)
        if position is not None:
            workers = live_worker_counts(svc.redis, [spec])[spec.name]
            body["queue_position"] = position
            body["eta_seconds"] = wait_estimate(svc.redis, spec, position + 1, workers)
    return body


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    """Status, queue position and an ETA from the model's recent throughput."""
    return jsonify(_describe(_fetch(job_id)))


@bp.delete("/jobs/<job_id>")
def cancel_job(job_id: str):
    """Remove the job if queued, stop it if running; its client gets no result."""
    job = _fetch(job_id)
    services().dispatcher.cancel(job.id)
    job.refresh()
    return jsonify(_describe(job))
