"""``/v1/jobs/{id}``: where a request is (queued, at which position, ETA) and cancelling it."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from api.fleet import live_worker_counts, wait_estimate
from api.ratelimit import subject_of_request
from api.services import services
from shared import keys
from shared.errors import NotFound
from shared.jobs import AnyJob, BadMessage, decode_job

bp = Blueprint("jobs", __name__, url_prefix="/v1")

#: Response ids carry an OpenAI-style prefix in front of the job id.
_ID_PREFIXES = ("chatcmpl-", "cmpl-", "rerank-", "embd-")


def _fetch(job_id: str) -> Job:
    """The caller's job; another key's job is as unknown as a job that never was (404)."""
    for prefix in _ID_PREFIXES:
        job_id = job_id.removeprefix(prefix)
    svc = services()
    missing = NotFound(f"no job {job_id!r} (finished jobs are kept a short while)", param="id")
    try:
        job = Job.fetch(job_id, connection=svc.redis, serializer=JSONSerializer)
    except (NoSuchJobError, ValueError) as exc:  # rq refuses ids with other than [A-Za-z0-9_-]
        raise missing from exc
    payload = _payload(job)
    # rq's job hashes are not namespaced: a job of another deployment (key prefix) is not ours.
    if payload is None or keys.queue_place(payload.model, job.origin) is None:
        raise missing
    if svc.settings.api_keys and payload.owner != subject_of_request():
        raise missing
    return job


def _payload(job: Job) -> AnyJob | None:
    """What ``job`` asks for (None for a job that is not modelyard's, which nobody may see)."""
    try:
        return decode_job((job.kwargs or {}).get("payload"))
    except BadMessage:
        return None


def _describe(job: Job) -> dict[str, Any]:
    svc = services()
    status = job.get_status(refresh=False)
    model = _payload(job).model  # _fetch made sure it is ours
    body: dict[str, Any] = {
        "id": job.id,
        "object": "job",
        "model": model,
        "status": status.value if status else None,
        "created_at": job.enqueued_at.timestamp() if job.enqueued_at else None,
        "started_at": job.started_at.timestamp() if job.started_at else None,
        "ended_at": job.ended_at.timestamp() if job.ended_at else None,
        "queue_position": None,
        "eta_seconds": None,
    }
    place = keys.queue_place(model, job.origin)
    if place is not None:  # the band it waits (or ran) in: aging may have moved it up
        body["band"] = place[0]
    spec = svc.catalog.resolve(model)
    if status == JobStatus.QUEUED and spec is not None:
        # Jobs of higher bands count as ahead, and those of its band's other lanes in turn.
        position = svc.dispatcher.jobs_ahead(spec.name, job.origin, job.id)
        if position is not None:
            workers = live_worker_counts(svc.redis, [spec])[spec.name]
            body["queue_position"] = position
            body["eta_seconds"] = wait_estimate(svc.redis, spec, position + 1, workers)
    return body


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    """Status, band, queue position and an ETA from the model's recent throughput."""
    return jsonify(_describe(_fetch(job_id)))


@bp.delete("/jobs/<job_id>")
def cancel_job(job_id: str):
    """Remove the job if queued, stop it if running; its client gets no result."""
    job = _fetch(job_id)
    services().dispatcher.cancel(job.id)
    job.refresh()
    return jsonify(_describe(job))
