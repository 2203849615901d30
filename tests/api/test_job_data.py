"""A job belongs to the key that made it, and Redis keeps an ended job's data only a short while."""

from __future__ import annotations

import threading
import time

import pytest

from harness import wait_until
from shared import keys

RETENTION_S = 7
CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keyed(make_app, redis_server, fleet):
    """An API with two keys and a short retention, in front of the session's real worker (so on the
    session's database)."""
    app = make_app(
        redis_server.url, request_timeout=30, api_keys=("key-one", "key-two"), job_retention_s=RETENTION_S
    )
    return app.test_client()


def job_ttl(redis_server, job_id: str) -> int:
    """Seconds left of the job's hash, once rq has recorded how it ended (just after its answer)."""
    client = redis_server.client()
    ended = {b"finished", b"failed", b"stopped", b"canceled"}
    wait_until(lambda: client.hget(f"rq:job:{job_id}", "status") in ended, 10, "rq's record of its end")
    return client.ttl(f"rq:job:{job_id}")


def test_a_job_answers_only_the_key_that_made_it(keyed):
    made = keyed.post("/v1/chat/completions", json=CHAT, headers=auth("key-one"))
    assert made.status_code == 200
    job_id = made.headers["X-Job-Id"]

    for method in (keyed.get, keyed.delete):
        other = method(f"/v1/jobs/{job_id}", headers=auth("key-two"))
        unknown = method("/v1/jobs/0123456789abcdef0123456789abcdef", headers=auth("key-two"))
        assert other.status_code == unknown.status_code == 404
        assert other.json["error"]["type"] == unknown.json["error"]["type"]
    mine = keyed.get(f"/v1/jobs/chatcmpl-{job_id}", headers=auth("key-one"))
    assert mine.status_code == 200 and mine.json["status"] == "finished"


def test_a_finished_or_failed_job_stays_only_the_retention_time(keyed, redis_server):
    finished = keyed.post("/v1/chat/completions", json=CHAT, headers=auth("key-one"))
    assert finished.status_code == 200
    assert 0 < job_ttl(redis_server, finished.headers["X-Job-Id"]) <= RETENTION_S

    too_long = {**CHAT, "messages": [{"role": "user", "content": "word " * 400}]}
    failed = keyed.post("/v1/chat/completions", json=too_long, headers=auth("key-one"))
    assert failed.status_code == 400 and failed.json["error"]["code"] == "context_length_exceeded"
    assert 0 < job_ttl(redis_server, failed.headers["X-Job-Id"]) <= RETENTION_S


def test_a_job_cancelled_in_its_queue_stays_only_the_retention_time(keyed, redis_server):
    # "ghost" has no real worker: a heartbeat entry makes admission queue its job, which then waits.
    client = redis_server.client()
    client.zadd(keys.model_workers_key("ghost"), {"test-heartbeat": time.time() + 60})
    answers: list = []
    try:
        body = {**CHAT, "model": "ghost"}
        waiting = threading.Thread(
            target=lambda: answers.append(
                keyed.post("/v1/chat/completions", json=body, headers=auth("key-one"))
            )
        )
        waiting.start()
        queued: list[bytes] = []
        wait_until(
            lambda: queued.extend(client.lrange(keys.rq_queue_key("ghost"), 0, -1)) or queued, 10, "the job"
        )
        job_id = queued[0].decode()
        assert keyed.delete(f"/v1/jobs/{job_id}", headers=auth("key-one")).json["status"] == "canceled"
        waiting.join(10)
    finally:
        client.zrem(keys.model_workers_key("ghost"), "test-heartbeat")
    assert answers[0].status_code == 499
    assert 0 < job_ttl(redis_server, job_id) <= RETENTION_S
