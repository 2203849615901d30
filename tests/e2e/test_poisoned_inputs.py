"""What an attacker sent to bin/api: poisoned inputs in a burst, huge integers, deep nesting, lax types.

Each bad request gets a 400 in OpenAI's error shape before anything is queued; no good request
beside it fails (issue 10, items 1 and 6).
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from simple_websocket import Client

LONE = "poisoned \ud800 input"  # requests' json= sends it as the escape "\ud800"
CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
COMPLETION = {"model": "tiny-chat", "prompt": "hi", "max_tokens": 2}
EMBEDDING = {"model": "minilm", "input": "hi"}
RERANK = {"model": "tiny-reranker", "query": "cats", "documents": ["a kitten"]}


def openai_error(response: requests.Response, status: int = 400) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    return error


def post(api_server, path: str, body: dict | bytes) -> requests.Response:
    if isinstance(body, bytes):
        return requests.post(
            api_server.url + path, data=body, headers={"Content-Type": "application/json"}, timeout=60
        )
    return requests.post(api_server.url + path, json=body, timeout=60)


# -- item 1: a poisoned input fails only its own request -------------------------------------------


def test_poisoned_requests_in_a_burst_fail_alone(api_server) -> None:
    """10 requests with a lone surrogate among 200 concurrent embedding requests."""
    poisoned = set(range(5, 200, 20))
    texts = [LONE if i in poisoned else f"good request {i} about a cat on a mat" for i in range(200)]
    barrier = threading.Barrier(len(texts))

    def call(text: str) -> requests.Response:
        barrier.wait(timeout=60)
        return requests.post(
            api_server.url + "/v1/embeddings", json={**EMBEDDING, "input": text}, timeout=120
        )

    with ThreadPoolExecutor(len(texts)) as pool:
        responses = list(pool.map(call, texts))

    statuses = [r.status_code for r in responses]
    assert sum(status == 200 for status in statuses) == 190, statuses
    good = [text for i, text in enumerate(texts) if i not in poisoned]
    reference = post(api_server, "/v1/embeddings", {**EMBEDDING, "input": good})
    assert reference.status_code == 200
    expected = iter(item["embedding"] for item in reference.json()["data"])
    for i, response in enumerate(responses):
        if i in poisoned:
            error = openai_error(response)
            assert error["param"] == "input" and error["message"].startswith("invalid Unicode")
        else:
            np.testing.assert_allclose(response.json()["data"][0]["embedding"], next(expected), atol=1e-5)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (
            "/v1/chat/completions",
            {**CHAT, "messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": LONE}]},
            "messages.1.content",
        ),
        ("/v1/completions", {**COMPLETION, "prompt": ["fine", LONE]}, "prompt.1"),
        ("/v1/rerank", {**RERANK, "documents": ["a kitten", {"text": LONE}]}, "documents.1.text"),
        ("/v1/embeddings", {**EMBEDDING, "input": ["fine", LONE]}, "input.1"),
    ],
)
def test_a_poisoned_chat_completion_rerank_or_embedding_is_400(api_server, path, body, param) -> None:
    error = openai_error(post(api_server, path, body))
    assert error["param"] == param and "invalid Unicode" in error["message"]


def test_utf8_encoded_surrogates_and_valid_pairs(api_server) -> None:
    raw = b'{"model": "minilm", "input": "bad \xed\xa0\x80 bytes"}'
    assert "invalid Unicode" in openai_error(post(api_server, "/v1/embeddings", raw))["message"]
    emoji = post(api_server, "/v1/embeddings", b'{"model": "minilm", "input": "a cat \\ud83d\\ude00"}')
    assert emoji.status_code == 200
    same = post(api_server, "/v1/embeddings", {**EMBEDDING, "input": "a cat \U0001f600"})
    np.testing.assert_allclose(emoji.json()["data"][0]["embedding"], same.json()["data"][0]["embedding"])


# -- item 6: strict, bounded JSON --------------------------------------------------------------------

HUGE = "9" * 5000


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize(
    ("path", "raw", "message"),
    [
        ("/v1/chat/completions", json.dumps(CHAT)[:-1] + f', "max_tokens": {HUGE}}}', "more than 100 digits"),
        ("/v1/completions", json.dumps(COMPLETION)[:-1] + f', "seed": -{HUGE}}}', "more than 100 digits"),
        ("/v1/chat/completions", json.dumps(CHAT)[:-1] + f', "user": {deep(5000)}}}', "nested too deeply"),
        ("/v1/embeddings", deep(5000), "nested too deeply"),
        ("/v1/embeddings", '{"a": ' * 5000 + "1" + "}" * 5000, "nested too deeply"),
        ("/v1/chat/completions", json.dumps(CHAT)[:-1] + ', "temperature": NaN}', "not a JSON value"),
    ],
)
def test_huge_integers_deep_nesting_and_non_json_are_400(api_server, path, raw, message) -> None:
    assert message in openai_error(post(api_server, path, raw.encode()))["message"]


def test_a_logit_bias_key_of_5000_digits_is_400(api_server) -> None:
    error = openai_error(post(api_server, "/v1/chat/completions", {**CHAT, "logit_bias": {HUGE: 1}}))
    assert error["param"] == "logit_bias" and HUGE not in error["message"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {**CHAT, "stream": "yes"}, "stream"),
        ("/v1/chat/completions", {**CHAT, "stream": 1}, "stream"),
        ("/v1/chat/completions", {**CHAT, "max_tokens": "16"}, "max_tokens"),
        ("/v1/chat/completions", {**CHAT, "max_tokens": True}, "max_tokens"),
        ("/v1/chat/completions", {**CHAT, "max_tokens": 16.0}, "max_tokens"),
        ("/v1/chat/completions", {**CHAT, "n": 1.5}, "n"),
        ("/v1/chat/completions", {**CHAT, "temperature": "0.5"}, "temperature"),
        ("/v1/chat/completions", {**CHAT, "temperature": False}, "temperature"),
        ("/v1/chat/completions", {**CHAT, "seed": "42"}, "seed"),
        ("/v1/chat/completions", {**CHAT, "logprobs": "true"}, "logprobs"),
        ("/v1/chat/completions", {**CHAT, "stream_options": {"include_usage": "yes"}}, "stream_options"),
        ("/v1/chat/completions", {**CHAT, "logit_bias": {"50": "1"}}, "logit_bias"),
        ("/v1/completions", {**COMPLETION, "prompt": [1.0, 2.0]}, "prompt"),
        ("/v1/completions", {**COMPLETION, "prompt": [True]}, "prompt"),
        ("/v1/completions", {**COMPLETION, "echo": "false"}, "echo"),
        ("/v1/embeddings", {**EMBEDDING, "dimensions": "8"}, "dimensions"),
        ("/v1/rerank", {**RERANK, "return_documents": "yes"}, "return_documents"),
        ("/v1/rerank", {**RERANK, "top_n": 1.0}, "top_n"),
    ],
)
def test_lax_types_are_400(api_server, path, body, param) -> None:
    assert openai_error(post(api_server, path, body))["param"].startswith(param)


def test_the_forms_clients_send_are_kept(api_server) -> None:
    """Integers for numbers, content parts, token ids, extra fields: what SDKs really send."""
    chat = {
        **CHAT,
        "temperature": 1,
        "top_p": 1,
        "presence_penalty": 0,
        "logit_bias": {"50": -1, "60": 0.5},
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}], "extra": {"x": [1]}}],
        "user": "someone",
        "metadata": {"trace": 5},
        "stream_options": None,
    }
    assert post(api_server, "/v1/chat/completions", chat).status_code == 200
    assert post(api_server, "/v1/completions", {**COMPLETION, "prompt": [[1, 2], [3]]}).status_code == 200
    assert post(api_server, "/v1/embeddings", {**EMBEDDING, "input": [[101, 2003, 102]]}).status_code == 200


# -- the same over the WebSocket -------------------------------------------------------------------


@pytest.fixture
def ws(api_server):
    client = Client.connect(api_server.url.replace("http://", "ws://") + "/v1/ws")
    yield client
    client.close()


def ws_error(ws, message: str) -> dict:
    ws.send(message)
    reply = ws.receive(timeout=60)
    assert ws.receive(timeout=60) == "[DONE]"
    error = json.loads(reply)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    return error


def test_websocket_messages_get_the_same_errors_and_the_socket_goes_on(ws) -> None:
    assert "nested too deeply" in ws_error(ws, deep(5000))["message"]
    chat = json.dumps({"type": "chat", **CHAT})
    assert "more than 100 digits" in ws_error(ws, chat[:-1] + f', "max_tokens": {HUGE}}}')["message"]
    assert "nested too deeply" in ws_error(ws, chat[:-1] + f', "user": {deep(5000)}}}')["message"]
    poisoned = json.dumps({"type": "chat", **CHAT, "messages": [{"role": "user", "content": LONE}]})
    assert ws_error(ws, poisoned)["param"] == "messages.0.content"
    assert ws_error(ws, json.dumps({"type": "chat", **CHAT, "max_tokens": "16"}))["param"] == "max_tokens"

    ws.send(chat)  # the socket still serves a good request
    replies = []
    while (reply := ws.receive(timeout=60)) != "[DONE]":
        assert reply is not None
        replies.append(json.loads(reply))
    assert replies and all("error" not in reply for reply in replies)
