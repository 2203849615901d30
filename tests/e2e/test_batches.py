"""The Batch API through the official SDK against the live stack: a batch of each endpoint equals
the same requests sent one by one, a bad file fails validation line by line, cancel keeps what was
done, and a batch whose worker is killed and whose API is restarted completes with every line once."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import openai
import pytest
import requests
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from harness import crash, start_api, stop_process, wait_until
from harness.services import ApiServer
from shared import keys
from tests.e2e.test_responses_background import kill_its_worker
from tests.settings import SPARE

FINAL = ("completed", "failed", "expired", "cancelled")


def jsonl(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def batch_lines(endpoint: str, bodies: list[dict]) -> list[dict]:
    return [
        {"custom_id": f"line-{i}", "method": "POST", "url": endpoint, "body": body}
        for i, body in enumerate(bodies)
    ]


def start_batch(sdk: openai.OpenAI, endpoint: str, bodies: list[dict]):
    uploaded = sdk.files.create(file=("input.jsonl", jsonl(batch_lines(endpoint, bodies))), purpose="batch")
    assert uploaded.purpose == "batch" and uploaded.bytes > 0
    return sdk.batches.create(input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h")


def wait_final(sdk: openai.OpenAI, batch_id: str, timeout: float = 240):
    wait_until(
        lambda: sdk.batches.retrieve(batch_id).status in FINAL, timeout, f"batch {batch_id} to end", 0.2
    )
    return sdk.batches.retrieve(batch_id)


def output_of(sdk: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in sdk.files.content(file_id).text.splitlines() if line.strip()]


CHAT = [
    {
        "model": "tiny-chat",
        "messages": [{"role": "user", "content": f"Say {i}."}],
        "max_tokens": 6,
        "seed": i,
        "temperature": 1.0,
    }
    for i in range(200)
]
COMPLETIONS = [
    {"model": "tiny-chat", "prompt": f"Count to {i}", "max_tokens": 6, "seed": i} for i in range(200)
]
EMBEDDINGS = [{"model": "minilm", "input": f"sentence number {i} about cats"} for i in range(300)]
RERANK = [
    {
        "model": "tiny-reranker",
        "query": f"query {i}",
        "documents": ["cats purr", f"dogs {i} bark", "fish swim"],
    }
    for i in range(200)
]
RESPONSES = [
    {"model": "tiny-chat", "input": f"Hello {i}", "max_output_tokens": 6, "seed": i} for i in range(100)
]


def _same_body(endpoint: str, batched: dict, alone: dict) -> None:
    if endpoint == "/v1/embeddings":
        got = np.array(batched["data"][0]["embedding"])
        assert np.allclose(got, alone["data"][0]["embedding"], atol=1e-5)
    elif endpoint == "/v1/rerank":
        assert [r["index"] for r in batched["results"]] == [r["index"] for r in alone["results"]]
        got = [r["relevance_score"] for r in batched["results"]]
        assert np.allclose(got, [r["relevance_score"] for r in alone["results"]], atol=1e-5)
    elif endpoint == "/v1/responses":
        assert batched["output"][0]["content"][0]["text"] == alone["output"][0]["content"][0]["text"]
        assert batched["usage"] == alone["usage"]
    else:
        assert [c.get("message") or c.get("text") for c in batched["choices"]] == [
            c.get("message") or c.get("text") for c in alone["choices"]
        ]
        assert batched["usage"] == alone["usage"]


@pytest.mark.parametrize(
    "endpoint, bodies",
    [
        ("/v1/chat/completions", CHAT),
        ("/v1/completions", COMPLETIONS),
        ("/v1/embeddings", EMBEDDINGS),
        ("/v1/rerank", RERANK),
        ("/v1/responses", RESPONSES),
    ],
    ids=["chat", "completions", "embeddings", "rerank", "responses"],
)
def test_a_batch_equals_its_requests_sent_one_by_one(sdk, api_server, endpoint, bodies) -> None:
    batch = start_batch(sdk, endpoint, bodies)
    assert batch.status == "validating" and batch.endpoint == endpoint
    done = wait_final(sdk, batch.id)
    assert done.status == "completed", done
    assert done.request_counts.total == len(bodies) and done.request_counts.completed == len(bodies)
    assert done.request_counts.failed == 0 and done.error_file_id is None
    assert done.completed_at >= done.in_progress_at >= done.created_at
    out = output_of(sdk, done.output_file_id)
    by_id = {line["custom_id"]: line for line in out}
    assert len(out) == len(bodies) == len(by_id)
    for i, body in enumerate(bodies):
        line = by_id[f"line-{i}"]
        assert line["error"] is None and line["response"]["status_code"] == 200
        alone = requests.post(api_server.url + endpoint, json=body, timeout=60)
        assert alone.status_code == 200, alone.text
        _same_body(endpoint, line["response"]["body"], alone.json())


def test_a_line_with_an_error_is_in_the_error_file_and_the_rest_run(sdk) -> None:
    bodies = [
        {"model": "minilm", "input": "fine"},
        {"model": "no-such-model", "input": "lost"},
        {"model": "minilm", "input": ""},
        {"model": "minilm", "input": "streamed", "stream": True},
        {"model": "minilm", "input": "also fine"},
    ]
    done = wait_final(sdk, start_batch(sdk, "/v1/embeddings", bodies).id)
    assert done.status == "completed"
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 3)
    assert {line["custom_id"] for line in output_of(sdk, done.output_file_id)} == {"line-0", "line-4"}
    errors = {line["custom_id"]: line for line in output_of(sdk, done.error_file_id)}
    assert errors["line-1"]["response"]["status_code"] == 404
    assert errors["line-1"]["error"]["code"] == "model_not_found"
    assert errors["line-2"]["response"]["status_code"] == 400
    assert errors["line-3"]["response"]["body"]["error"]["param"] == "stream"


def test_a_bad_input_file_fails_validation_naming_each_line(sdk) -> None:
    good = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/embeddings",
        "body": {"model": "minilm", "input": "x"},
    }
    raw = b"\n".join(
        [
            json.dumps(good).encode(),
            b"{not json",
            json.dumps({**good, "url": "/v1/chat/completions"}).encode(),
            json.dumps(good).encode(),  # custom_id "a" again
            json.dumps({**good, "custom_id": "b", "body": "text"}).encode(),
        ]
    )
    uploaded = sdk.files.create(file=("bad.jsonl", raw), purpose="batch")
    batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
    done = wait_final(sdk, batch.id)
    assert done.status == "failed" and done.failed_at is not None
    codes = {(e.line, e.code) for e in done.errors.data}
    assert codes == {
        (2, "invalid_json_line"),
        (3, "mismatched_endpoint"),
        (4, "duplicate_custom_id"),
        (5, "missing_required_parameter"),
    }
    assert done.output_file_id is None and done.request_counts.completed == 0


def test_cancel_mid_batch_keeps_the_partial_output(sdk, spare) -> None:
    bodies = [
        {
            "model": SPARE,
            "messages": [{"role": "user", "content": "go"}],
            "max_tokens": 60,
            "ignore_eos": True,
        }
        for _ in range(200)
    ]
    batch = start_batch(sdk, "/v1/chat/completions", bodies)
    wait_until(lambda: sdk.batches.retrieve(batch.id).request_counts.completed >= 4, 120, "a few lines", 0.2)
    cancelling = sdk.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = wait_final(sdk, batch.id, timeout=60)
    assert done.status == "cancelled" and done.cancelled_at is not None
    out = output_of(sdk, done.output_file_id)
    assert 4 <= len(out) == done.request_counts.completed < len(bodies)
    assert len({line["custom_id"] for line in out}) == len(out)
    assert all(line["response"]["body"]["usage"]["completion_tokens"] == 60 for line in out)
    with pytest.raises(openai.BadRequestError):
        sdk.batches.cancel(wait_final(sdk, start_batch(sdk, "/v1/embeddings", EMBEDDINGS[:2]).id).id)


@pytest.fixture(scope="module")
def spare(start_worker):
    worker = start_worker(SPARE)
    yield worker
    worker.stop()


def client(server: ApiServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture
def own_api(base_env, tmp_path) -> Iterator[tuple[ApiServer, dict]]:
    env = {**base_env, "MODELYARD_BATCH_WINDOW": "2"}
    server, log = start_api(env, tmp_path / "api.log")
    yield server, env
    stop_process(server.proc)
    log.close()


def running_lines(redis_server) -> list[str]:
    """Jobs of the spare model's batch band that a worker runs now."""
    name = keys.queue_name(SPARE, "batch")
    registry = StartedJobRegistry(name, connection=redis_server.client(), serializer=JSONSerializer)
    return registry.get_job_ids(cleanup=False)


def test_a_batch_survives_a_killed_worker_and_a_restarted_api(
    sdk, spare, start_worker, own_api, redis_server, tmp_path
) -> None:
    server, env = own_api
    worker = start_worker(SPARE)
    bodies = [
        {"model": SPARE, "messages": [{"role": "user", "content": f"n{i}"}], "max_tokens": 30, "seed": i}
        for i in range(120)
    ]
    batch = start_batch(client(server), "/v1/chat/completions", bodies)
    wait_until(lambda: sdk.batches.retrieve(batch.id).request_counts.completed >= 10, 120, "10 lines", 0.1)
    # kill -9 of a worker running one of its lines, then of the API process running the batch.
    wait_until(lambda: running_lines(redis_server), 30, "a line to run")
    kill_its_worker(redis_server, running_lines(redis_server)[0], [spare, worker])
    crash(server.proc)
    at_crash = sdk.batches.retrieve(batch.id).request_counts.completed
    restarted, log = start_api(env, tmp_path / "api-2.log", port=server.port)
    replacement = start_worker(SPARE)
    try:
        done = wait_final(client(restarted), batch.id)
    finally:
        stop_process(restarted.proc)
        log.close()
        # The session's factory would keep them (the one not killed) for the modules after this.
        replacement.stop()
        worker.stop()
    assert done.status == "completed" and at_crash < len(bodies)
    out = output_of(sdk, done.output_file_id)
    ids = [line["custom_id"] for line in out]
    assert sorted(ids) == sorted(f"line-{i}" for i in range(len(bodies)))  # each exactly once
    assert done.request_counts.completed == len(bodies) and done.error_file_id is None
