"""Every Redis key, channel, queue name and timing modelyard uses.

Nothing in ``api/`` or ``workers/`` builds a key string inline; it calls a function here.
"""

from __future__ import annotations

from shared.config import key_prefix_from_env
from shared.priority import BANDS, DEFAULT_BAND, LANES_PER_BAND, Band

#: This deployment's namespace (``MODELYARD_KEY_PREFIX``, default ``modelyard``): every key and
#: channel below starts with it, and so does every rq queue name (rq keeps its own ``rq:`` keys).
#: Read once per process, from the environment, so that every process and tool of a deployment
#: (API, workers, benchmarks, the tests' harness) agrees on it without being told.
PREFIX = key_prefix_from_env()

#: Dotted path of the only function a worker will run for an rq job.
JOB_FUNCTION = "workers.tasks.run_job"

# How long an ended job and its data stay in Redis is a setting, not a constant here:
# ``Settings.job_retention_s`` (rq keeps a finished job 500 s and a failed one a year by default).

#: Seconds a cancel marker lives; longer than any deadline a client can ask for.
CANCEL_TTL_S = 3600


def queue_name(model: str, band: Band = DEFAULT_BAND, lane: int = 0) -> str:
    """rq queue that holds the jobs of ``model`` in one band and lane (docs/scheduling.md):
    ``<prefix>:<model>`` for the normal band's lane 0 (the name it had before there were bands),
    ``<prefix>:<model>:<band>-<lane>`` for the others. rq stores it under ``rq:queue:<name>``; the
    prefix keeps another deployment or rq application from sharing it."""
    if band == DEFAULT_BAND and lane == 0:
        return f"{PREFIX}:{model}"
    return f"{PREFIX}:{model}:{band}-{lane}"


def band_queue_names(model: str, band: Band) -> list[str]:
    """The queues of one band of ``model``, lane 0 first."""
    return [queue_name(model, band, lane) for lane in range(LANES_PER_BAND)]


def model_queue_names(model: str, bands: tuple[Band, ...] = BANDS) -> list[str]:
    """Every queue of ``model`` (of ``bands``), most urgent band first, each band's lanes in order."""
    return [name for band in bands for name in band_queue_names(model, band)]


def queue_place(model: str, name: str) -> tuple[Band, int] | None:
    """The band and lane of ``model``'s queue ``name``; None for a name that is not one of them."""
    for band in BANDS:
        for lane in range(LANES_PER_BAND):
            if queue_name(model, band, lane) == name:
                return band, lane
    return None


#: Field of a queued job's rq hash: when it entered its present band (``utcformat``), written as
#: aging moves it up; before that its ``enqueued_at`` tells (api/aging.py).
BAND_SINCE_FIELD = "modelyard_band_since"


def aging_lock_key() -> str:
    """Held for one sweep by the API process that moves long-waiting jobs up a band."""
    return f"{PREFIX}:aging"


def worker_key(worker_id: str) -> str:
    """Heartbeat key of one worker process: JSON status, expires ``heartbeat_ttl`` s after the last beat."""
    return f"{PREFIX}:worker:{worker_id}"


def model_workers_key(model: str) -> str:
    """Sorted set of worker ids serving ``model``, scored by the epoch second their heartbeat expires."""
    return f"{PREFIX}:model-workers:{model}"


def reply_channel(api_instance: str, session: int) -> str:
    """Pub/sub channel one API process listens on for the events of every job it enqueued.

    One per subscription session: a process that loses its subscription fails the requests waiting
    on it and subscribes a new channel, so a channel has a subscriber exactly while someone waits
    for its jobs. Workers read that (``PUBSUB NUMSUB``, never persisted) as the proof that a job
    is still awaited.
    """
    return f"{PREFIX}:reply:{api_instance}:{session}"


def cancel_key(job_id: str) -> str:
    """Marker set when a job's client went away; a worker checks it before starting the job."""
    return f"{PREFIX}:cancel:{job_id}"


def skipped_jobs_key() -> str:
    """Hash of jobs workers took off a queue and did not run, by ``<model>:<reason>``
    (``cancelled``, ``expired``, ``unawaited``): the work a Redis restart or a gone client saved."""
    return f"{PREFIX}:skipped-jobs"


def worker_watch_channel(worker_id: str) -> str:
    """A channel nobody publishes on: a worker's heartbeat subscribes to it so that the subscription
    breaking tells it at once that Redis went away (and it must re-register when Redis is back)."""
    return f"{PREFIX}:watch:{worker_id}"


def result_key(job_id: str) -> str:
    """A result too big for pub/sub, kept ``Settings.job_retention_s`` seconds for the API to read."""
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
    """rq worker name of one slot of a worker process: for people (rq-dashboard, logs) only; the
    worker id holds a hostname, which may have dots, so nothing parses it (see :data:`JOB_WORKER`)."""
    return f"{worker_id}.{model}.{slot}"


def doorbell_key(model: str, band: Band) -> str:
    """List a model's idle slots block on (``BLPOP``) to learn that a job of ``band`` came: every
    push onto one of the band's queues rings it (:func:`shared.doorbell.ring`); a slot then takes
    the job with a script (workers/taking.py), which no lost connection can lose."""
    return f"{PREFIX}:doorbell:{model}:{band}"


#: Most rings a doorbell holds: enough to wake every waiting slot; a take empties it with the band.
DOORBELL_MAX_RINGS = 64


def slot_takings_key(slot_name: str) -> str:
    """Hash of the jobs one slot took off its queues and has not started yet (job id -> queue key):
    a job is always in a queue, here, or started, so a slot that dies or loses its connection
    between the take and the start loses nothing (its takings go back to the front)."""
    return f"{PREFIX}:takings:{slot_name}"


def takers_key() -> str:
    """Hash of every slot that ever took a job (slot name -> worker id): the janitor returns the
    takings of the slots whose worker stopped beating."""
    return f"{PREFIX}:takers"


#: Field of a job's rq hash: which run of the job this is (0 first, one more for each requeue
#: after its worker was lost). Workers stamp every event with it and the API drops the events of
#: an earlier run, so a worker cut off from Redis that comes back cannot speak for a job that runs
#: elsewhere now.
JOB_RUN_FIELD = "modelyard_run"


#: Field of a started job's rq ``meta``: the id of the worker process whose slot runs it (its
#: heartbeat is ``worker_key(<id>)``), written in the same transaction that marks the job started.
JOB_WORKER = "modelyard_worker"


def job_worker_id(meta: dict) -> str | None:
    """The worker process that runs a started job, from its rq ``meta``; None if no slot of ours
    recorded one (the job never started, or a worker of an older version started it)."""
    worker_id = meta.get(JOB_WORKER)
    return worker_id if isinstance(worker_id, str) and worker_id else None


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


def rq_queue_key(model: str, band: Band = DEFAULT_BAND, lane: int = 0) -> str:
    """The Redis list rq keeps the queued job ids of one of ``model``'s queues in, oldest first."""
    return RQ_QUEUE_PREFIX + queue_name(model, band, lane)


# -- the Responses API (docs/responses.md) ---------------------------------------------------------

#: Most entries of a background response's event stream (one per decode step, XADD's MAXLEN ~).
RESPONSE_EVENTS_MAXLEN = 20_000
#: Seconds a background response's event stream lives after its last entry (replay with
#: ``starting_after``); the response object itself lives ``Settings.response_ttl_s``.
RESPONSE_EVENTS_TTL_S = 3600
#: Seconds past its job's deadline after which a response still not final is failed.
RESPONSE_DEADLINE_GRACE_S = 5


def response_key(response_id: str) -> str:
    """A stored response (JSON: object, input items, conversation), ``Settings.response_ttl_s``."""
    return f"{PREFIX}:response:{response_id}"


def response_events_key(response_id: str) -> str:
    """Redis Stream of a background response's job events (the worker appends them): a job whose
    ``reply_to`` is such a key is awaited by no subscriber and runs on (see :func:`is_events_stream`)."""
    return f"{PREFIX}:response-events:{response_id}"


def is_events_stream(reply_to: str) -> bool:
    """Whether a job's ``reply_to`` is a response's event stream rather than a pub/sub channel."""
    return reply_to.startswith(f"{PREFIX}:response-events:")


def background_responses_key() -> str:
    """Sorted set of background responses not yet final, scored by their job's deadline."""
    return f"{PREFIX}:responses-active"


def responses_keeper_lock_key() -> str:
    """Held for one sweep by the API process that finalizes background responses."""
    return f"{PREFIX}:responses-keeper"


# -- the Batch API (docs/batches.md) ---------------------------------------------------------------


def batch_key(batch_id: str) -> str:
    """A batch (JSON: OpenAI's batch object and who owns it); kept for good, like its files."""
    return f"{PREFIX}:batch:{batch_id}"


def batches_key() -> str:
    """Sorted set of every batch, scored by its creation time (``GET /v1/batches`` pages it)."""
    return f"{PREFIX}:batches"


def active_batches_key() -> str:
    """Set of the batches not yet final: the runners of the API processes take them from here."""
    return f"{PREFIX}:batches-active"


def batch_lease_key(batch_id: str) -> str:
    """Held (``SET NX PX``, renewed) by the one API process running a batch; expires with it."""
    return f"{PREFIX}:batch-lease:{batch_id}"


#: Milliseconds a batch's lease lives unless renewed: another API process resumes a batch this
#: long after the one running it died.
BATCH_LEASE_MS = 10_000


def interactive_key() -> str:
    """Set (``INTERACTIVE_TTL_MS``) with every job admitted outside the batch band: while it lives,
    batches run with their busy window, leaving the fleet to interactive traffic."""
    return f"{PREFIX}:interactive"


#: Milliseconds the interactive mark lives after the latest interactive job's admission.
INTERACTIVE_TTL_MS = 2_000
