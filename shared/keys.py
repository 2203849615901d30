"""Every Redis key, channel, queue name and timing modelyard uses.

Nothing in ``api/`` or ``workers/`` builds a key string inline; it calls a function here.
"""

from __future__ import annotations

#: Namespace of every key modelyard owns (rq keeps its own ``rq:`` namespace).
PREFIX = "modelyard"

#: Dotted path of the only function a worker will run for an rq job.
JOB_FUNCTION = "workers.tasks.run_job"

#: Seconds a finished job's rq result is kept (the API reads it if a pub/sub event was too big).
RESULT_TTL_S = 300

#: Seconds a failed job stays in rq's failed registry (rq's default is a year).
FAILURE_TTL_S = 24 * 3600

#: Seconds a cancel marker lives; longer than any deadline a client can ask for.
CANCEL_TTL_S = 3600


def queue_name(model: str) -> str:
    """rq queue that holds the jobs of ``model`` (rq stores it under ``rq:queue:<name>``)."""
    return model


def worker_key(worker_id: str) -> str:
    """Heartbeat key of one worker process: JSON status, expires ``heartbeat_ttl`` s after the last beat."""
    return f"{PREFIX}:worker:{worker_id}"


def worker_key_pattern() -> str:
    """SCAN pattern matching every worker heartbeat key."""
    return f"{PREFIX}:worker:*"


def model_workers_key(model: str) -> str:
    """Sorted set of worker ids serving ``model``, scored by the epoch second their heartbeat expires."""
    return f"{PREFIX}:model-workers:{model}"


def reply_channel(api_instance: str) -> str:
    """Pub/sub channel one API process listens on for the events of every job it enqueued."""
    return f"{PREFIX}:reply:{api_instance}"


def cancel_key(job_id: str) -> str:
    """Marker set when a job's client went away; a worker checks it before starting the job."""
    return f"{PREFIX}:cancel:{job_id}"


def result_key(job_id: str) -> str:
    """A result too big for pub/sub, kept ``RESULT_TTL_S`` seconds for the API to read."""
    return f"{PREFIX}:result:{job_id}"
