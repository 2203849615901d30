"""Workers that die, drain or lose their client, seen through the API."""

import os
import signal
import time

import openai
import pytest
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from harness import wait_until
from tests.settings import HEARTBEAT_TTL, LONG_TOKENS, SPARE

PROMPT = [{"role": "user", "content": "Write a long story."}]


def listed(sdk) -> set[str]:
    return {model.id for model in sdk.models.list()}


def engine_stats(redis_server, worker) -> dict:
    """The spare engine's counters from a heartbeat sent after this call (the last one may be stale)."""
    asked = time.time()
    fresh: dict = {}

    def beat() -> bool:
        status = worker.status(redis_server)
        if status is None or status["beat_at"] <= asked:
            return False
        fresh.update(status["engines"][SPARE])
        return True

    wait_until(beat, 5, f"a fresh heartbeat from worker {worker.pid}")
    return fresh


def job_status(redis_server, job_id: str) -> JobStatus:
    return Job.fetch(job_id, connection=redis_server.client(), serializer=JSONSerializer).get_status()


def test_killed_worker_disappears_and_its_model_answers_503_at_once(start_worker, sdk):
    worker = start_worker(SPARE)
    assert SPARE in listed(sdk)
    os.kill(worker.pid, signal.SIGKILL)
    worker.proc.wait()
    wait_until(lambda: SPARE not in listed(sdk), HEARTBEAT_TTL + 2, "the dead worker to expire")
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.chat.completions.create(model=SPARE, messages=PROMPT, max_tokens=4)
    assert caught.value.status_code == 503
    assert time.monotonic() - started < 1.0


def test_closing_a_stream_stops_generation_on_the_worker(start_worker, sdk, redis_server):
    worker = start_worker(SPARE)
    try:
        before = engine_stats(redis_server, worker)["tokens_generated"]
        # Greedy decoding of the tiny model never picks its end token: only the client can stop it.
        stream = sdk.chat.completions.create(
            model=SPARE, messages=PROMPT, max_tokens=LONG_TOKENS, temperature=0, stream=True
        )
        chunks = iter(stream)
        first = next(chunks)
        for _ in range(3):
            next(chunks)
        stream.close()
        job_id = first.id.removeprefix("chatcmpl-")
        wait_until(lambda: job_status(redis_server, job_id) != JobStatus.STARTED, 10, "the job to stop")
        assert job_status(redis_server, job_id) == JobStatus.STOPPED
        stats = engine_stats(redis_server, worker)
        assert stats["running"] == 0
        generated = stats["tokens_generated"] - before
        assert generated < 100, f"the worker generated {generated} tokens after the client left"
    finally:
        worker.stop()


def test_sigterm_lets_the_running_stream_finish(start_worker, sdk, redis_server):
    worker = start_worker(SPARE)
    stream = sdk.chat.completions.create(model=SPARE, messages=PROMPT, max_tokens=300, seed=11, stream=True)
    chunks = iter(stream)
    text = [next(chunks).choices[0].delta.content or ""]
    worker.proc.send_signal(signal.SIGTERM)
    finish = None
    for chunk in chunks:
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert finish in ("stop", "length")
    assert worker.proc.wait(30) == 0
    assert SPARE not in listed(sdk)
    log = worker.log()
    assert "draining" in log and "cut short" not in log
    worker.stop()


def test_a_non_streaming_client_that_leaves_stops_its_job(start_worker, redis_server, api_server):
    import requests

    worker = start_worker(SPARE)
    try:
        before = engine_stats(redis_server, worker)
        with pytest.raises(requests.ReadTimeout):
            requests.post(
                api_server.url + "/v1/chat/completions",
                timeout=(2, 0.5),
                json={"model": SPARE, "messages": PROMPT, "max_tokens": LONG_TOKENS, "temperature": 0},
            )
        wait_until(lambda: engine_stats(redis_server, worker)["running"] == 0, 5, "the engine to go idle")
        after = engine_stats(redis_server, worker)
        generated = after["tokens_generated"] - before["tokens_generated"]
        # The API notices a silent client within a second (it peeks at the socket while waiting)
        # and its job is cancelled: a quiet 2-core machine makes about 1000 tokens a second, so
        # 4000 leaves room for a machine twice as fast and a slow notice.
        assert after["jobs_cancelled"] == before["jobs_cancelled"] + 1
        assert generated < 4000, f"the worker generated {generated} tokens after the client left"
    finally:
        worker.stop()


def test_a_rolling_restart_under_load_drops_no_request(start_worker, sdk):
    import threading

    workers = [start_worker(SPARE), start_worker(SPARE)]
    stop = threading.Event()
    outcomes: list = []

    def load() -> None:
        while not stop.is_set():
            try:
                r = sdk.chat.completions.create(model=SPARE, messages=PROMPT, max_tokens=60, temperature=0)
                outcomes.append(r.usage.completion_tokens)
            except Exception as exc:  # noqa: BLE001 - every failure is reported below
                outcomes.append(exc)

    clients = [threading.Thread(target=load) for _ in range(3)]
    for client in clients:
        client.start()
    try:
        for i in range(len(workers)):  # one at a time: SIGTERM (drain), then a fresh worker
            old = workers[i]
            old.proc.send_signal(signal.SIGTERM)
            assert old.proc.wait(60) == 0
            workers[i] = start_worker(SPARE)
        # Until the fresh workers have served some of the load too.
        served = len(outcomes)
        wait_until(lambda: len(outcomes) >= served + 6, 60, "requests after the restarts")
    finally:
        stop.set()
        for client in clients:
            client.join(60)
        for worker in workers:
            worker.stop()
    failures = [o for o in outcomes if isinstance(o, Exception)]
    assert not failures, failures[:3]
    assert len(outcomes) > 10 and all(o == 60 for o in outcomes)
