"""Workers that die, drain or lose their client, seen through the API."""

import json
import os
import signal
import time

import openai
import pytest
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from tests.support import HEARTBEAT_TTL, wait_until

SPARE = "tiny-chat-spare"
PROMPT = [{"role": "user", "content": "Write a long story."}]


def listed(sdk) -> set[str]:
    return {model.id for model in sdk.models.list()}


def engine_stats(redis_server, worker) -> dict:
    client = redis_server.client()
    for key in client.scan_iter(match="modelyard:worker:*"):
        status = json.loads(client.get(key) or "{}")
        if status.get("pid") == worker.pid:
            return status["engines"][SPARE]
    raise AssertionError(f"no heartbeat from worker {worker.pid}")


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
        stream = sdk.chat.completions.create(model=SPARE, messages=PROMPT, max_tokens=1800, stream=True)
        chunks = iter(stream)
        first = next(chunks)
        for _ in range(3):
            next(chunks)
        stream.close()
        job = Job.fetch(
            first.id.removeprefix("chatcmpl-"), connection=redis_server.client(), serializer=JSONSerializer
        )
        wait_until(lambda: job.get_status(refresh=True) != JobStatus.STARTED, 10, "the job to stop")
        assert job.get_status() == JobStatus.STOPPED
        wait_until(
            lambda: engine_stats(redis_server, worker)["running"] == 0,
            5,
            "the engine to go idle",
            interval=0.3,
        )
        generated = engine_stats(redis_server, worker)["tokens_generated"] - before
        assert generated < 300, f"the worker generated {generated} of 1800 tokens after the client left"
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


def test_a_non_streaming_client_that_leaves_stops_its_job(start_worker, sdk, redis_server, api_server):
    import requests

    worker = start_worker(SPARE)
    try:
        before = engine_stats(redis_server, worker)["tokens_generated"]
        with pytest.raises(requests.ReadTimeout):
            requests.post(
                api_server.url + "/v1/chat/completions",
                timeout=(2, 0.5),
                json={"model": SPARE, "messages": PROMPT, "max_tokens": 1800},
            )
        wait_until(
            lambda: engine_stats(redis_server, worker)["running"] == 0,
            5,
            "the engine to go idle",
            interval=0.3,
        )
        generated = engine_stats(redis_server, worker)["tokens_generated"] - before
        assert generated < 1000, f"the worker generated {generated} of 1800 tokens after the client left"
    finally:
        worker.stop()
