"""``/metrics``: request figures of this app, queue and fleet figures read from Redis."""

import json
import time
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.utils import now, utcformat

from api.app import create_app
from api.observe import endpoint_label
from shared import keys
from shared.config import Settings
from shared.status import ENGINE_STATS, GenerationStats, PoolingStats, WorkerStatus

CHAT = "/v1/chat/completions"


def scrape(client) -> dict[tuple[str, tuple], float]:
    """Every sample as ``{(name, sorted labels): value}``."""
    with client.get("/metrics") as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.get_data(as_text=True)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples, name, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def request(client, method, path, **kwargs) -> int:
    """Make a request and close its response: the record is finished when the response closes."""
    with client.open(path, method=method, **kwargs) as response:
        return response.status_code


def chat_body(model):
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


def test_requests_are_counted_by_endpoint_model_and_status(client):
    assert request(client, "POST", CHAT, json=chat_body("nope")) == 404
    assert request(client, "POST", CHAT, json=chat_body("ghost")) == 503
    assert request(client, "POST", "/v1/embeddings", json={"model": "tiny-chat", "input": "x"}) == 400
    # An alias resolves to its model; an alias prefix to the /v1 route.
    assert request(client, "POST", "/api/v1/embeddings", json={"model": "gpt-test", "input": "x"}) == 400
    assert request(client, "GET", "/no/such/route") == 404
    samples = scrape(client)
    total = "modelyard_requests_total"
    # Unknown models leave the label empty: only configured names become label values.
    assert value(samples, total, endpoint=CHAT, model="", status="404") == 1
    assert value(samples, total, endpoint=CHAT, model="ghost", status="503") == 1
    assert value(samples, total, endpoint="/v1/embeddings", model="tiny-chat", status="400") == 2
    assert value(samples, total, endpoint="unmatched", model="", status="404") == 1
    count = "modelyard_request_duration_seconds_count"
    assert value(samples, count, endpoint=CHAT, model="ghost") == 1


def test_each_app_has_its_own_registry(client, make_app, redis_db):
    request(client, "POST", CHAT, json=chat_body("ghost"))
    samples = scrape(make_app(redis_db.url).test_client())
    assert value(samples, "modelyard_requests_total", endpoint=CHAT, model="ghost", status="503") is None
    assert value(samples, "modelyard_requests_total", endpoint="/metrics", model="", status="200") is None


def test_queue_depth_and_oldest_job_age_come_from_rq(client, redis_db):
    # Nothing serves "ghost": jobs put on its queue stay there.
    queue = Queue(keys.queue_name("ghost"), connection=redis_db.client(), serializer=JSONSerializer)
    assert queue.key == keys.rq_queue_key("ghost")
    assert keys.RQ_JOB_PREFIX == Job.redis_job_namespace_prefix
    try:
        old = queue.enqueue(keys.JOB_FUNCTION, payload={}, job_id="metrics-old")
        # Enqueued 5 s ago, by rq's own enqueued_at: moved back instead of waited for.
        redis_db.client().hset(old.key, "enqueued_at", utcformat(now() - timedelta(seconds=5)))
        queue.enqueue(keys.JOB_FUNCTION, payload={}, job_id="metrics-new")
        samples = scrape(client)
        assert value(samples, "modelyard_queue_depth", model="ghost") == 2
        assert 1.0 <= value(samples, "modelyard_queue_oldest_job_age_seconds", model="ghost") < 30
        assert value(samples, "modelyard_queue_depth", model="tiny-reranker") is not None
        assert value(samples, "modelyard_redis_up") == 1
        # The oldest job's hash expired (rq leaves its id in the list): the next one's age counts.
        redis_db.client().delete(keys.RQ_JOB_PREFIX + "metrics-old")
        age = value(scrape(client), "modelyard_queue_oldest_job_age_seconds", model="ghost")
        assert 0 <= age < 1.0
    finally:
        queue.delete(delete_jobs=True)
    assert value(scrape(client), "modelyard_queue_oldest_job_age_seconds", model="ghost") == 0


def test_a_bands_oldest_job_age_counts_from_when_it_entered_the_band(client, redis_db):
    # ghost's high band as aging leaves it: a job aged in at the head (queued 50 s ago, in the band
    # for 2), then admitted ones, oldest first. The band's oldest is the one there for 10 s.
    redis = redis_db.client()
    queue = Queue(keys.queue_name("ghost", "high"), connection=redis, serializer=JSONSerializer)

    def ago(seconds: float) -> str:
        return utcformat(now() - timedelta(seconds=seconds))

    try:
        for job_id, queued in (("aged", 50), ("admitted", 10), ("later", 1)):
            job = queue.enqueue(keys.JOB_FUNCTION, payload={}, job_id=f"metrics-{job_id}")
            redis.hset(job.key, "enqueued_at", ago(queued))
        redis.hset(Job.key_for("metrics-aged"), keys.BAND_SINCE_FIELD, ago(2))
        samples = scrape(client)
        assert value(samples, "modelyard_band_queue_depth", model="ghost", band="high") == 3
        assert 9 <= value(samples, "modelyard_band_oldest_job_age_seconds", model="ghost", band="high") < 20
        assert value(samples, "modelyard_band_oldest_job_age_seconds", model="ghost", band="normal") == 0
    finally:
        queue.delete(delete_jobs=True)


def heartbeat_status(worker: str, **engines: GenerationStats | PoolingStats) -> WorkerStatus:
    now = time.time()
    return WorkerStatus(
        id=worker,
        host="test-host",
        pid=1,
        models=["ghost"],
        started_at=now,
        beat_at=now,
        slots={"ghost": 4},
        busy=1,
        running=[],
        engines=engines,
    )


@pytest.fixture
def beating(redis_db):
    """Writes worker statuses as heartbeats of ``ghost`` workers; removes them afterwards."""
    r = redis_db.client()
    written = []

    def write(worker: str, raw: str) -> None:
        written.append(worker)
        r.set(keys.worker_key(worker), raw, ex=30)
        r.zadd(keys.model_workers_key("ghost"), {worker: time.time() + 30})

    yield write
    for worker in written:
        r.delete(keys.worker_key(worker))
        r.zrem(keys.model_workers_key("ghost"), worker)


def test_fleet_figures_come_from_worker_heartbeats(client, beating):
    worker = "metrics-test-worker"
    stats = GenerationStats(tokens_generated=42, steps=10, last_batch_size=3, jobs_done=5, jobs_failed=1)
    raw = json.loads(heartbeat_status(worker, ghost=stats).encode())
    raw["engines"]["ghost"]["something_new"] = 7  # a newer worker's counter: ignored, not refused
    beating(worker, json.dumps(raw))
    samples = scrape(client)
    labels = {"model": "ghost", "worker": worker}
    assert value(samples, "modelyard_model_workers", model="ghost") == 1
    assert value(samples, "modelyard_worker_tokens_generated_total", **labels) == 42
    assert value(samples, "modelyard_worker_steps_total", **labels) == 10
    assert value(samples, "modelyard_worker_jobs_done_total", **labels) == 5
    assert value(samples, "modelyard_worker_jobs_failed_total", **labels) == 1
    assert value(samples, "modelyard_worker_last_batch_size", **labels) == 3
    assert value(samples, "modelyard_worker_slots", **labels) == 4
    assert value(samples, "modelyard_worker_busy_slots", worker=worker) == 1
    assert not any("something_new" in name for name, _ in samples)


def test_a_worker_leaves_the_metrics_when_its_heartbeat_goes(client, redis_db, beating):
    worker = "metrics-gone-worker"
    beating(worker, heartbeat_status(worker, ghost=GenerationStats()).encode())
    assert value(scrape(client), "modelyard_model_workers", model="ghost") == 1
    redis_db.client().delete(keys.worker_key(worker))
    redis_db.client().zrem(keys.model_workers_key("ghost"), worker)
    assert value(scrape(client), "modelyard_model_workers", model="ghost") == 0


@pytest.mark.parametrize("stats_model", ENGINE_STATS)
def test_every_engine_counter_is_exported(client, beating, stats_model):
    """The metric families come from the stats models: no counter is left out (as
    ``cache_tokens_reserved`` and ``last_batch_passes`` once were)."""
    worker = f"metrics-{stats_model.__name__}"
    fields = stats_model.metric_fields()
    stats = stats_model(**{name: number for number, name in enumerate(fields, 1)})
    beating(worker, heartbeat_status(worker, ghost=stats).encode())
    samples = scrape(client)
    for number, (name, (kind, _)) in enumerate(fields.items(), 1):
        metric = f"modelyard_worker_{name}" + ("_total" if kind == "counter" else "")
        assert value(samples, metric, model="ghost", worker=worker) == number, metric


def test_an_unreadable_worker_status_is_skipped(client, beating):
    beating("metrics-garbage-worker", '{"id": "metrics-garbage-worker", "slots": 4}')
    beating(
        "metrics-good-worker", heartbeat_status("metrics-good-worker", ghost=PoolingStats(batches=2)).encode()
    )
    samples = scrape(client)
    assert value(samples, "modelyard_model_workers", model="ghost") == 2
    assert value(samples, "modelyard_worker_batches_total", model="ghost", worker="metrics-good-worker") == 2
    assert not any(("worker", "metrics-garbage-worker") in labels for _, labels in samples)


def test_metrics_answer_while_redis_is_down(models_file):
    from harness import free_port

    app = create_app(Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", models_file=models_file))
    try:
        samples = scrape(app.test_client())
        assert value(samples, "modelyard_redis_up") == 0
        assert value(samples, "modelyard_requests_total", endpoint="/metrics", model="", status="200") is None
    finally:
        app.extensions["modelyard"].close()


@pytest.mark.parametrize(
    "rule, label",
    [
        ("/v1/chat/completions", "/v1/chat/completions"),
        ("/api/v1/chat/completions", "/v1/chat/completions"),
        ("/v3/embeddings", "/v1/embeddings"),
        ("/rerank", "/rerank"),
        (None, "unmatched"),
    ],
)
def test_endpoint_labels_are_routes_with_aliases_folded(rule, label):
    assert endpoint_label(rule) == label
