"""/metrics against the real fleet, and JSON logs from bin/api and bin/worker."""

import json
import socket
import time

import requests
from prometheus_client.parser import text_string_to_metric_families

from harness import start_api, stop_process, wait_until
from shared import keys
from tests.e2e.rawhttp import request_bytes
from tests.e2e.test_worker_lifecycle import SPARE


def scrape(api_server) -> dict:
    response = requests.get(api_server.url + "/metrics", timeout=10)
    assert response.status_code == 200
    samples: dict = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples, name, **labels) -> float:
    return sum(v for sample_labels, v in samples.get(name, []) if labels.items() <= sample_labels.items())


def test_metrics_of_a_live_fleet(api_server, sdk):
    chat = [{"role": "user", "content": "hi"}]
    sdk.chat.completions.create(model="tiny-chat", messages=chat, max_tokens=4)
    for _ in sdk.chat.completions.create(model="tiny-chat", messages=chat, max_tokens=4, stream=True):
        pass
    sdk.embeddings.create(model="minilm", input=["a", "b", "c"])
    asked = time.time()

    def fresh_heartbeats() -> bool:  # the engines' counters travel in heartbeats (every ttl/3 s)
        samples = scrape(api_server)
        return (
            total(samples, "modelyard_worker_jobs_done_total", model="minilm") > 0 and time.time() > asked + 1
        )

    wait_until(fresh_heartbeats, 10, "heartbeats with engine counters", interval=0.3)
    samples = scrape(api_server)
    chat_labels = {"endpoint": "/v1/chat/completions", "model": "tiny-chat", "status": "200"}
    assert total(samples, "modelyard_requests_total", **chat_labels) >= 2
    assert total(samples, "modelyard_request_duration_seconds_count", model="tiny-chat") >= 2
    assert total(samples, "modelyard_time_to_first_token_seconds_count", model="tiny-chat") >= 1
    assert total(samples, "modelyard_queue_wait_seconds_count", model="minilm") >= 1
    assert total(samples, "modelyard_model_workers", model="tiny-chat") >= 1
    assert total(samples, "modelyard_model_workers", model="ghost") == 0
    assert total(samples, "modelyard_queue_depth", model="tiny-chat") == 0
    assert total(samples, "modelyard_worker_tokens_generated_total", model="tiny-chat") >= 8
    assert total(samples, "modelyard_worker_jobs_done_total", model="tiny-chat") >= 2
    assert total(samples, "modelyard_worker_inputs_done_total", model="minilm") >= 3
    assert total(samples, "modelyard_worker_slots", model="tiny-chat") >= 4


def json_lines(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError as exc:
            raise AssertionError(f"not a JSON log line: {line!r}") from exc
    return parsed


def test_json_logs_from_the_api_and_the_worker(start_worker, base_env, tmp_path):
    env = {**base_env, "MODELYARD_LOG_FORMAT": "json"}
    worker = start_worker(SPARE, env=env)
    server, log = start_api(env, tmp_path / "api.log")
    try:
        response = requests.post(
            server.url + "/v1/completions",
            json={"model": SPARE, "prompt": "Once", "max_tokens": 5, "stream": True},
            timeout=60,
        )
        assert response.status_code == 200
        job_id = response.headers["X-Job-Id"]
        unknown = requests.post(
            server.url + "/v1/completions", json={"model": "nope", "prompt": "x"}, timeout=10
        )
        assert unknown.status_code == 404

        def logged() -> list[dict]:
            return [
                line
                for line in json_lines((tmp_path / "api.log").read_text())
                if line["logger"] == "api.requests" and line.get("path") == "/v1/completions"
            ]

        wait_until(lambda: len(logged()) == 2, 10, "two request lines")
        done, failed = logged()
        assert done["job_id"] == job_id and done["model"] == SPARE and done["status"] == 200
        assert done["endpoint"] == "/v1/completions" and done["stream"] is True
        assert done["prompt_tokens"] > 0 and done["completion_tokens"] == 5
        assert 0 <= done["queued_s"] < 5 and 0 < done["run_s"] <= done["total_s"]
        assert done["first_token_s"] <= done["total_s"]
        assert failed["status"] == 404 and failed["error"] == "model_not_found" and "job_id" not in failed
        assert {"ts", "level", "message"} <= set(done)

        stop_process(worker.proc)  # stops the worker, so its log is complete
        lines = json_lines(worker.log())
        messages = [line["message"] for line in lines]
        assert any(m.startswith(f"loading model 1/1: {SPARE} (chat)") for m in messages), messages
        assert any(m.startswith(f"loaded model 1/1: {SPARE} in") and "peak RSS" in m for m in messages)
        assert any("done in" in m and job_id in m for m in messages)
    finally:
        worker.stop()
        stop_process(server.proc)
        log.close()


def test_a_client_that_left_is_logged_and_counted_as_cancelled(base_env, redis_server, tmp_path):
    """499 ``cancelled``, not 504 ``deadline_exceeded``: the client went away, no deadline passed."""
    env = {**base_env, "MODELYARD_LOG_FORMAT": "json"}
    server, log = start_api(env, tmp_path / "api.log")
    r = redis_server.client()
    r.zadd(keys.model_workers_key("ghost"), {"test-client-left": time.time() + 60})  # ghost jobs queue
    try:
        body = {"model": "ghost", "messages": [{"role": "user", "content": "hi"}]}
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as client:
            client.sendall(request_bytes(server.url, "POST", "/v1/chat/completions", body))
            wait_until(lambda: r.llen(keys.rq_queue_key("ghost")) > 0, 10, "the job to be queued")
        labels = {"endpoint": "/v1/chat/completions", "model": "ghost"}

        def counted(status: str) -> float:
            return total(scrape(server), "modelyard_requests_total", status=status, **labels)

        wait_until(lambda: counted("499") == 1, 10, "the request to be counted")
        assert counted("504") == 0
        wait_until(lambda: r.llen(keys.rq_queue_key("ghost")) == 0, 10, "the job to be taken out")
        lines = [
            line
            for line in json_lines((tmp_path / "api.log").read_text())
            if line["logger"] == "api.requests" and line.get("path") == "/v1/chat/completions"
        ]
        assert [(line["status"], line["error"]) for line in lines] == [(499, "cancelled")]
    finally:
        r.zrem(keys.model_workers_key("ghost"), "test-client-left")
        stop_process(server.proc)
        log.close()
