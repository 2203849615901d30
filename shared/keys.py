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


#: How many recent job durations a model keeps for throughput estimates (Retry-After, ETA).
DURATION_SAMPLES = 100


def job_durations_key(model: str) -> str:
    """List of the last ``DURATION_SAMPLES`` job run times (seconds) of ``model``, newest first."""
    return f"{PREFIX}:durations:{model}"


def janitor_lock_key() -> str:
    """Held for one sweep by the API process that looks for jobs of dead workers."""
    return f"{PREFIX}:janitor"


def slot_worker_name(worker_id: str, model: str, slot: int) -> str:
    """rq worker name of one slot of a worker process."""
    return f"{worker_id}.{model}.{slot}"


def worker_id_of_slot(rq_worker_name: str) -> str:
    """The worker process id inside an rq slot worker's name (see :func:`slot_worker_name`)."""
    return rq_worker_name.split(".", 1)[0]


#: Length of a rate-limit window, in seconds.
RATE_WINDOW_S = 60


def rate_key(subject: str, kind: str, now: float) -> str:
    """Counter of ``kind`` (requests or tokens) used by ``subject`` (a hashed client) in the window
    holding epoch second ``now``; it expires two windows later."""
    return f"{PREFIX}:rate:{subject}:{kind}:{int(now // RATE_WINDOW_S)}"


#: rq's own key prefixes (the queue's list of job ids, each job's hash): the metrics scrape reads
#: queue depth and the oldest job's ``enqueued_at`` in one script, which rq has no API for.
RQ_QUEUE_PREFIX = "rq:queue:"
RQ_JOB_PREFIX = "rq:job:"


def rq_queue_key(model: str) -> str:
    """The Redis list rq keeps ``model``'s queued job ids in, oldest first."""
    return RQ_QUEUE_PREFIX + queue_name(model)
