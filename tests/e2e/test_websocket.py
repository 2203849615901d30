"""``/v1/ws``: the SSE endpoint's chunks over a WebSocket, errors as OpenAI JSON, cancel on close."""

import json

import pytest
from rq.job import JobStatus
from simple_websocket import Client

from harness import wait_until
from tests.e2e.test_worker_lifecycle import PROMPT, SPARE, engine_stats, job_status

DONE = "[DONE]"


@pytest.fixture
def ws(api_server):
    client = Client.connect(api_server.url.replace("http://", "ws://") + "/v1/ws")
    yield client
    client.close()


def exchange(ws, body: dict) -> list:
    """Send one request; its messages up to ``[DONE]``, JSON decoded (``[DONE]`` left out)."""
    ws.send(json.dumps(body))
    messages = []
    while True:
        message = ws.receive(timeout=60)
        assert message is not None, "no message within 60 s"
        if message == DONE:
            return messages
        messages.append(json.loads(message))


def sse_chunks(api_server, path: str, body: dict) -> list:
    import requests

    with requests.post(api_server.url + path, json={**body, "stream": True}, stream=True, timeout=60) as r:
        assert r.status_code == 200
        data = [
            line[len("data: ") :] for line in r.iter_lines(decode_unicode=True) if line.startswith("data: ")
        ]
    assert data[-1] == DONE
    return [json.loads(d) for d in data[:-1]]


def without_ids(chunks: list) -> list:
    return [{k: v for k, v in chunk.items() if k not in ("id", "created")} for chunk in chunks]


def test_chat_over_websocket_sends_the_sse_chunks(ws, api_server):
    body = {
        "model": "tiny-chat",
        "messages": [{"role": "user", "content": "Hello!"}],
        "max_tokens": 12,
        "seed": 5,
        "n": 2,
        "stream_options": {"include_usage": True},
    }
    chunks = exchange(ws, {"type": "chat", **body})
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert without_ids(chunks) == without_ids(sse_chunks(api_server, "/v1/chat/completions", body))


def test_completion_over_websocket_and_several_requests_per_socket(ws, api_server):
    body = {"model": "tiny-chat", "prompt": "Once upon a time", "max_tokens": 6, "seed": 2}
    first = exchange(ws, body)  # no "type": a body without messages is a completion
    assert {c["object"] for c in first} == {"text_completion"}
    assert without_ids(first) == without_ids(sse_chunks(api_server, "/v1/completions", body))
    second = exchange(ws, {**body, "type": "completion"})
    assert without_ids(second) == without_ids(first)


@pytest.mark.parametrize(
    "message, code, param",
    [
        ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, "model_not_found", "model"),
        ({"model": "tiny-chat", "messages": [], "type": "chat"}, "invalid_value", "messages"),
        ({"model": "tiny-chat", "prompt": "x", "type": "embedding"}, "invalid_value", "type"),
        ({"model": "minilm", "prompt": "x"}, "model_not_supported", "model"),
        ("not json", "invalid_value", None),
    ],
)
def test_errors_are_openai_error_json_and_the_socket_stays_usable(ws, message, code, param):
    ws.send(message if isinstance(message, str) else json.dumps(message))
    error = json.loads(ws.receive(timeout=30))
    assert set(error["error"]) == {"message", "type", "param", "code"}
    assert (error["error"]["code"], error["error"]["param"]) == (code, param)
    assert ws.receive(timeout=30) == DONE
    assert exchange(ws, {"model": "tiny-chat", "prompt": "ok", "max_tokens": 2})


def test_auth_applies_to_the_upgrade(base_env, tmp_path):
    from simple_websocket.errors import ConnectionError as WsConnectionError

    from harness import start_api, stop_process

    server, log = start_api({**base_env, "MODELYARD_API_KEYS": "sekret"}, tmp_path / "api.log")
    url = server.url.replace("http://", "ws://") + "/v1/ws"
    try:
        with pytest.raises(WsConnectionError):
            Client.connect(url)
        client = Client.connect(url, headers={"Authorization": "Bearer sekret"})
        try:
            [error] = exchange(client, {"model": "ghost", "prompt": "x"})
            assert error["error"]["code"] == "model_unavailable"
        finally:
            client.close()
    finally:
        stop_process(server.proc)
        log.close()


def test_closing_the_socket_stops_generation_on_the_worker(start_worker, api_server, redis_server):
    worker = start_worker(SPARE)
    try:
        before = engine_stats(redis_server, worker)["tokens_generated"]
        ws = Client.connect(api_server.url.replace("http://", "ws://") + "/v1/ws")
        # Greedy decoding of the tiny model never picks its end token: only the client can stop it.
        ws.send(json.dumps({"model": SPARE, "messages": PROMPT, "max_tokens": 1800, "temperature": 0}))
        chunks = [json.loads(ws.receive(timeout=60)) for _ in range(5)]
        ws.close()
        job_id = chunks[0]["id"].removeprefix("chatcmpl-")
        wait_until(lambda: job_status(redis_server, job_id) != JobStatus.STARTED, 10, "the job to stop")
        assert job_status(redis_server, job_id) == JobStatus.STOPPED
        stats = engine_stats(redis_server, worker)
        assert stats["running"] == 0
        generated = stats["tokens_generated"] - before
        assert generated < 100, f"the worker generated {generated} of 1800 tokens after the socket closed"
    finally:
        worker.stop()
