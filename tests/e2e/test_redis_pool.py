"""Bursts past the Redis pool: no false "Redis is unreachable", and a real outage says so at once.

Issue 10: 512 request threads over redis-py's default pool of 100 connections raised
``MaxConnectionsError`` in a burst, answered 503 ``redis_unavailable`` while Redis was fine (120 of
300 concurrent streams, 26 of 300 rerank requests, 153 of 300 ``Dispatcher.submit`` calls). Now a
request waits for a free connection; one that waits too long gets 503 ``server_busy``.
"""

from __future__ import annotations

import threading
import time

import pytest
import requests
from redis import Redis

from api.errors import ServerBusy
from api.middleware import RequestContext
from harness import RedisServer, free_port, start_api, stop_process, wait_until
from shared.connection import connect
from shared.errors import ModelyardError, RateLimited
from shared.jobs import RerankJob
from tests.e2e.rawhttp import Reply, burst, request_bytes

BURST = 300
CHAT = {
    "model": "tiny-chat",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 4,
    "stream": True,
}
RERANK = {"model": "tiny-reranker", "query": "what is redis", "documents": ["an in-memory store", "a city"]}


def _verdicts(replies: list[Reply | BaseException], *, stream: bool) -> dict[str, int]:
    """Each reply's outcome: ``ok``, ``refused <status> <code>`` (with Retry-After), or what went wrong."""
    counts: dict[str, int] = {}
    for reply in replies:
        if isinstance(reply, BaseException):
            verdict = f"client error {type(reply).__name__}"
        elif reply.status == 200:
            code = reply.error_code()  # a stream's error comes in a data frame
            done = b"data: [DONE]" in reply.body if stream else bool(reply.body)
            verdict = "ok" if code is None and done else f"200 with error {code}"
        elif reply.status in (429, 503) and "retry-after" in reply.headers:
            verdict = f"refused {reply.status} {reply.error_code()}"
        else:
            verdict = f"wrong {reply.status} {reply.error_code()}"
        counts[verdict] = counts.get(verdict, 0) + 1
    return counts


def _assert_no_false_outage(counts: dict[str, int]) -> None:
    allowed = {"ok", "refused 429 queue_full", "refused 503 server_busy"}
    assert set(counts) <= allowed, counts
    assert counts.get("ok", 0) >= BURST // 2, counts


def test_a_burst_of_streams_gets_no_false_redis_unavailable(api_server, fleet):
    raw = request_bytes(api_server.url, "POST", "/v1/chat/completions", CHAT)
    counts = _verdicts(burst(api_server.url, [raw] * BURST, timeout=120), stream=True)
    _assert_no_false_outage(counts)


def test_a_burst_of_rerank_requests_gets_no_false_redis_unavailable(api_server, fleet):
    raw = request_bytes(api_server.url, "POST", "/v1/rerank", RERANK)
    counts = _verdicts(burst(api_server.url, [raw] * BURST, timeout=120), stream=False)
    _assert_no_false_outage(counts)


def _rerank_job(services) -> RerankJob:
    return RerankJob(
        job_id=services.dispatcher.new_job_id(),
        model="tiny-reranker",
        reply_to=services.router.channel,
        deadline=time.time() + 60,
        query="q",
        documents=["a", "b"],
    )


def test_submit_from_300_threads_waits_for_connections(make_app, redis_server, fleet):
    """More threads than the pool has connections: each submit waits its turn, none fails."""
    services = make_app(redis_server.url, request_timeout=30).extensions["modelyard"]  # the fleet's database
    assert services.redis.connection_pool.max_connections < BURST
    outcomes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(BURST)

    def submit() -> None:
        job = _rerank_job(services)
        start.wait()
        try:
            run = services.dispatcher.run(job, RequestContext())
        except RateLimited:
            outcome = "queue_full"
        except ModelyardError as error:
            outcome = f"{error.status} {error.code}"
        else:
            try:
                with run:
                    run.wait()
                outcome = "ok"
            except ModelyardError as error:
                outcome = f"result {error.status} {error.code}"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=submit) for _ in range(BURST)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    counts = {outcome: outcomes.count(outcome) for outcome in set(outcomes)}
    assert set(counts) <= {"ok", "queue_full"}, counts
    assert counts.get("ok", 0) >= BURST // 2, counts


def test_a_pool_that_stays_full_answers_server_busy_with_retry_after(make_app, redis_db):
    """The one connection is held (a blocking command): the request waits, then 503 server_busy."""
    app = make_app(redis_db.url, redis_max_connections=1, redis_pool_timeout=0.3)
    services = app.extensions["modelyard"]
    holder = threading.Thread(target=lambda: services.redis.blpop("modelyard-test:nothing", 3))
    holder.start()
    wait_until(
        lambda: any(c["cmd"] == "blpop" for c in redis_db.client().client_list()),
        5,
        "the BLPOP to hold the pool's connection",
    )
    with pytest.raises(ServerBusy) as caught:
        services.dispatcher.run(_rerank_job(services), RequestContext())
    assert caught.value.status == 503 and caught.value.retry_after == 1
    started = time.monotonic()
    response = app.test_client().get("/v1/models")
    assert response.status_code == 503, response.get_json()
    assert response.get_json()["error"]["code"] == "server_busy"
    assert response.headers["Retry-After"] == "1"
    assert time.monotonic() - started < 2
    holder.join(5)


def test_blocking_commands_outlive_the_pool_wait(redis_db):
    """``socket_timeout`` still bounds a blocking command, not the pool's wait for a connection."""
    client: Redis = connect(redis_db.url, socket_timeout=5, max_connections=2, pool_timeout=0.1)
    started = time.monotonic()
    assert client.blpop("modelyard-test:nothing", 1) is None
    assert time.monotonic() - started >= 1


@pytest.fixture
def private_api(base_env, tmp_path):
    """An API on a Redis of its own, so that stopping Redis leaves the other tests alone."""
    redis_server = RedisServer(port=free_port(), workdir=tmp_path)
    redis_server.start()
    api, log = start_api({**base_env, "MODELYARD_REDIS_URL": redis_server.url}, tmp_path / "api.log")
    yield redis_server, api
    stop_process(api.proc)
    log.close()
    redis_server.stop()


def test_with_redis_stopped_a_request_gets_redis_unavailable_at_once(private_api):
    redis_server, api = private_api
    body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    # Redis is up (no worker here): the model has none.
    assert requests.post(api.url + "/v1/chat/completions", json=body, timeout=10).status_code == 503
    redis_server.stop()
    for path, payload in (("/v1/chat/completions", body), ("/v1/rerank", RERANK)):
        started = time.monotonic()
        response = requests.post(api.url + path, json=payload, timeout=30)
        took = time.monotonic() - started
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "redis_unavailable"
        assert "Retry-After" in response.headers
        assert took < 6, f"{path} took {took:.1f}s to say Redis is down"
    started = time.monotonic()
    assert requests.get(api.url + "/health", timeout=5).status_code == 503
    assert time.monotonic() - started < 1
