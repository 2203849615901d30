"""Issue 10, item 5: one request cannot hold a model (through bin/api and a real bin/worker)."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import openai
import pytest
import requests

from harness import wait_until
from tests.e2e.rawhttp import request_bytes
from tests.e2e.test_worker_lifecycle import PROMPT, SPARE, engine_stats

#: Every model of the test models file keeps the default cap.
CAP = 256
#: What the attacker sent: 32,768 sequences.
HUGE = {"prompt": [f"Tell story {i}." for i in range(256)], "n": 128}


def test_a_request_past_the_sequence_cap_is_refused_before_it_is_queued(api_server, sdk):
    reply = requests.post(api_server.url + "/v1/completions", json={"model": "tiny-chat", **HUGE}, timeout=10)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", "n", "invalid_value")
    assert "256 prompts x n=128 = 32768 sequences" in error["message"]
    assert f"at most {CAP} sequences per request" in error["message"]

    with pytest.raises(openai.BadRequestError) as caught:
        sdk.completions.create(model="tiny-chat", prompt=["a", "b", "c"], n=128, stream=True)
    assert caught.value.param == "n"
    # The ghost model has no worker: a job that reached the queue would get 503, not 400.
    ghost = requests.post(api_server.url + "/v1/completions", json={"model": "ghost", **HUGE}, timeout=10)
    assert ghost.status_code == 400 and ghost.json()["error"]["param"] == "n"


def test_a_small_chat_behind_a_request_at_the_cap_finishes_within_2s(
    start_worker, base_env, sdk, api_server, redis_server
):
    # 2 slots, 8 running rows: one is kept for the other slot's job. One torch thread, as models.yaml
    # gives tiny-chat: two on these 2 busy cores made a decode step of 8 rows ~300 ms instead of ~10.
    worker = start_worker(SPARE, env={**base_env, "OMP_NUM_THREADS": "1"})
    url = urlsplit(api_server.url)
    big = socket.create_connection((url.hostname, url.port), timeout=10)
    try:
        # 2 prompts x n=128 = the cap; greedy decoding of the tiny model never ends before max_tokens.
        # Not streamed, so that reading its stream costs the 2 cores nothing while the chat is timed.
        body = {
            "model": SPARE,
            "prompt": ["Once", "The queue"],
            "n": CAP // 2,
            "max_tokens": 1500,
            "temperature": 0,
        }
        big.sendall(request_bytes(api_server.url, "POST", "/v1/completions", body))
        wait_until(
            lambda: engine_stats(redis_server, worker)["running"] == 7, 30, "the big request to decode"
        )

        started = time.monotonic()
        small = sdk.chat.completions.create(
            model=SPARE, messages=PROMPT, max_tokens=4, extra_body={"ignore_eos": True}
        )
        took = time.monotonic() - started
        stats = engine_stats(redis_server, worker)
        big.close()  # its client hangs up: the API cancels the job
        wait_until(lambda: engine_stats(redis_server, worker)["running"] == 0, 15, "the big job to stop")

        assert small.usage.completion_tokens == 4 and small.choices[0].finish_reason == "length"
        # Measured on 2 cores at load 5-6: 0.09-0.22 s. With first-come-first-served admission the
        # chat waited for 249 of the big request's choices to start: the SDK's 60 s timeout ran out.
        assert took < 2.0, f"the small chat took {took:.2f}s behind the big request"
        assert stats["jobs_done"] == 1 and stats["running"] == 7, "the big request kept decoding"
        assert engine_stats(redis_server, worker)["jobs_cancelled"] == 1
    finally:
        big.close()
        worker.stop()
