"""Every error is OpenAI's JSON with the right status, decided before any job is queued."""

import time

import pytest

from shared.config import Settings


def error_of(response, status):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


CHAT = "/v1/chat/completions"


def chat_body(**overrides):
    return {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], **overrides}


def test_unknown_model_is_404(client):
    error = error_of(client.post(CHAT, json=chat_body(model="nope")), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    error_of(client.get("/v1/models/nope"), 404)


def test_wrong_kind_is_400(client):
    error = error_of(client.post("/v1/embeddings", json={"model": "tiny-chat", "input": "x"}), 400)
    assert error["param"] == "model" and error["code"] == "model_not_supported"
    error_of(client.post(CHAT, json=chat_body(model="minilm")), 400)


def test_model_without_live_worker_is_503_at_once(client):
    started = time.monotonic()
    response = client.post(CHAT, json=chat_body(model="ghost"))
    assert time.monotonic() - started < 1.0
    error = error_of(response, 503)
    assert response.headers["Retry-After"].isdigit()
    assert "no live worker" in error["message"]


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": "tiny-chat"}, "messages"),
        (chat_body(messages=[]), "messages"),
        (chat_body(messages=[{"role": "wizard", "content": "x"}]), "messages.0.role"),
        (chat_body(temperature=5), "temperature"),
        (chat_body(temperature="hot"), "temperature"),
        (chat_body(max_tokens=0), "max_tokens"),
        (chat_body(max_tokens=10**30), "max_tokens"),
        (chat_body(top_p=-1), "top_p"),
        (chat_body(n=0), "n"),
        (chat_body(seed=2**80), "seed"),
        (chat_body(stop=[1, 2]), "stop"),
        (
            chat_body(
                messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
            ),
            "messages.0.content.0.type",
        ),
        (chat_body(logprobs=True, top_logprobs=21), "top_logprobs"),
        (chat_body(top_logprobs=2), "top_logprobs"),
        (chat_body(presence_penalty=2.5), "presence_penalty"),
        (chat_body(frequency_penalty=-3), "frequency_penalty"),
        (chat_body(logit_bias={"hello": 1}), "logit_bias"),
        (chat_body(logit_bias={"5": 101}), "logit_bias.5"),
        (chat_body(top_k=-2), "top_k"),
        (chat_body(min_p=1.5), "min_p"),
        (chat_body(repetition_penalty=0), "repetition_penalty"),
        (chat_body(stop_token_ids=[-1]), "stop_token_ids.0"),
        (chat_body(echo=True), "echo"),
        (chat_body(tools=[{"type": "function", "function": {"name": "no spaces"}}]), "tools.0.function.name"),
        (chat_body(tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="x"), "tool_choice"),
        (chat_body(functions=[{"name": "f"}]), "functions"),
    ],
)
def test_invalid_chat_bodies_name_the_parameter(client, body, param):
    assert error_of(client.post(CHAT, json=body), 400)["param"] == param


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/completions", {"model": "tiny-chat"}, "prompt"),
        ("/v1/completions", {"model": "tiny-chat", "prompt": [1, -2]}, "prompt"),
        ("/v1/completions", {"model": "tiny-chat", "prompt": [[1], []]}, "prompt"),
        ("/v1/completions", {"model": "tiny-chat", "prompt": "x", "logprobs": 6}, "logprobs"),
        ("/v1/embeddings", {"model": "minilm", "input": [[1, 2], [-1]]}, "input"),
        ("/v1/embeddings", {"model": "minilm", "input": "x", "dimensions": 0}, "dimensions"),
        ("/v1/rerank", {"model": "tiny-reranker", "query": "q", "texts": []}, "texts"),
        ("/v1/rerank", {"model": "tiny-reranker", "query": "q", "texts": ["a"], "documents": ["b"]}, "texts"),
        ("/v1/completions", {"model": "tiny-chat", "prompt": "x", "best_of": 3}, "best_of"),
        ("/v1/embeddings", {"model": "minilm", "input": ""}, "input"),
        ("/v1/embeddings", {"model": "minilm", "input": ["a", ""]}, "input.1"),
        ("/v1/embeddings", {"model": "minilm", "input": []}, "input"),
        ("/v1/embeddings", {"model": "minilm", "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ("/v1/rerank", {"model": "tiny-reranker", "query": "q"}, "documents"),
        ("/v1/rerank", {"model": "tiny-reranker", "query": "q", "documents": ["a"], "top_n": 0}, "top_n"),
    ],
)
def test_invalid_bodies_of_other_endpoints(client, path, body, param):
    assert error_of(client.post(path, json=body), 400)["param"] == param


@pytest.mark.parametrize("data", [b"{not json", b"", b"[1, 2]", b"\xff\xfe", b'"text"', b"null"])
def test_malformed_json_is_400(client, data):
    error_of(client.post(CHAT, data=data, content_type="application/json"), 400)


def test_routes_and_methods(client):
    error_of(client.get("/v1/nothing-here"), 404)
    error_of(client.get(CHAT), 405)


def test_body_size_limit_is_413(make_app, redis_db):
    app = make_app(redis_db.url, max_body_bytes=1000)
    response = app.test_client().post(
        CHAT, json=chat_body(messages=[{"role": "user", "content": "x" * 5000}])
    )
    error_of(response, 413)


def test_api_keys(make_app, redis_db):
    client = make_app(redis_db.url, api_keys=("k1", "k2")).test_client()
    assert error_of(client.get("/v1/models"), 401)["type"] == "authentication_error"
    error_of(client.get("/v1/models", headers={"Authorization": "Bearer nope"}), 401)
    error_of(client.get("/v1/models", headers={"Authorization": "Basic k1"}), 401)
    assert client.get("/v1/models", headers={"Authorization": "Bearer k2"}).status_code == 200
    assert client.get("/health").status_code == 200


def test_health_reports_redis_down(models_file):
    from api.app import create_app

    app = create_app(Settings(redis_url="redis://127.0.0.1:1/0", models_file=models_file))
    client = app.test_client()
    response = client.get("/health")
    assert response.status_code == 503 and response.get_json()["redis"] == "down"
    assert client.get("/health/live").status_code == 200
    error_of(client.get("/v1/models"), 503)
