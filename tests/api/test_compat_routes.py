"""Other servers' paths (DB-GPT's /api/v1, OpenVINO Model Server's /v3, FastChat's embeddings paths):
the same views, validation, errors and authentication as /v1, decided before any job is queued."""

import pytest

from api.routes.prefixes import ALIASES, HOME

PREFIXES = (HOME, *ALIASES)


def error_of(response, status):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def routes_under(app, prefix):
    """``{path without prefix: (endpoint, methods)}`` of the rules under ``prefix``."""
    return {
        rule.rule.removeprefix(prefix): (rule.endpoint, frozenset(rule.methods))
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith(prefix + "/")
    }


def test_every_v1_route_is_served_under_each_alias_by_the_same_view(app):
    home = routes_under(app, HOME)
    assert {"/models", "/chat/completions", "/completions", "/embeddings", "/rerank"} <= set(home)
    assert {"/beta/relevance", "/create_embeddings", "/engines/<path:model>/embeddings"} <= set(home)
    for prefix in ALIASES:
        assert routes_under(app, prefix) == home
    # FastChat's /v1/create_embeddings is the embeddings view itself, not a copy.
    views = app.view_functions
    assert views["compat.embeddings"] is views["pooling.embeddings"]


@pytest.mark.parametrize("prefix", PREFIXES)
def test_unknown_routes_and_wrong_methods_keep_the_envelope(client, prefix):
    assert error_of(client.get(prefix + "/nothing-here"), 404)["code"] == "not_found"
    assert error_of(client.get(prefix + "/chat/completions"), 405)["code"] == "method_not_allowed"
    error_of(client.get(prefix + "/beta/relevance"), 405)
    error_of(client.get(prefix + "/engines/minilm/embeddings"), 405)
    # OPTIONS is answered by Flask, as for /v1, never by the view.
    assert client.options(prefix + "/chat/completions").status_code == 200


@pytest.mark.parametrize("prefix", ALIASES)
def test_aliases_validate_and_admit_like_v1(client, prefix):
    chat = {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}
    assert error_of(client.post(prefix + "/chat/completions", json=chat), 404)["code"] == "model_not_found"
    error = error_of(client.post(prefix + "/embeddings", json={"model": "tiny-chat", "input": "x"}), 400)
    assert error["code"] == "model_not_supported"
    error = error_of(client.post(prefix + "/completions", json={"model": "tiny-chat"}), 400)
    assert error["param"] == "prompt"
    error = error_of(client.post(prefix + "/chat/completions", json={**chat, "model": "ghost"}), 503)
    assert "no live worker" in error["message"]
    assert error_of(client.get(prefix + "/models/nope"), 404)["code"] == "model_not_found"
    error = error_of(client.post(prefix + "/rerank", json={"model": "tiny-reranker", "query": "q"}), 400)
    assert error["param"] == "documents"


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"model": "tiny-reranker", "query": "q"}, 400, "documents"),
        ({"model": "tiny-reranker", "query": "q", "documents": []}, 400, "documents"),
        ({"model": "tiny-reranker", "documents": ["a"]}, 400, "query"),
        ({"model": "tiny-reranker", "query": "q", "documents": [1]}, 400, "documents.0"),
        ({"query": "q", "documents": ["a"]}, 400, "model"),
        ({"model": "nope", "query": "q", "documents": ["a"]}, 404, "model"),
        ({"model": "minilm", "query": "q", "documents": ["a"]}, 400, "model"),
    ],
)
@pytest.mark.parametrize("prefix", ["/api/v1", "/v1"])
def test_dbgpt_relevance_validation(client, prefix, body, status, param):
    assert error_of(client.post(prefix + "/beta/relevance", json=body), status)["param"] == param


def test_engine_path_names_the_model(client):
    # The path's model is used even when the body names another one.
    response = client.post("/v1/engines/tiny-chat/embeddings", json={"model": "minilm", "input": "x"})
    error = error_of(response, 400)
    assert error["code"] == "model_not_supported" and "tiny-chat" in error["message"]
    error = error_of(client.post("/v1/engines/nope/embeddings", json={"input": "x"}), 404)
    assert error["code"] == "model_not_found" and "'nope'" in error["message"]
    # Hugging Face ids have a slash (the pre-1.0 SDK sends it %2F-quoted; servers decode it).
    error = error_of(client.post("/v1/engines/org%2Fnope/embeddings", json={"input": "x"}), 404)
    assert "'org/nope'" in error["message"]
    error = error_of(client.post("/v1/engines/org/nope/embeddings", json={"input": "x"}), 404)
    assert "'org/nope'" in error["message"]
    error_of(client.post("/v1/engines/minilm/embeddings", data=b"[1]", content_type="application/json"), 400)
    error_of(client.post("/v1/engines/minilm/embeddings", data=b"{no", content_type="application/json"), 400)
    assert error_of(client.post("/v1/engines/minilm/embeddings", json={}), 400)["param"] == "input"


def test_fastchat_create_embeddings_validates_like_embeddings(client):
    error = error_of(client.post("/v1/create_embeddings", json={"model": "minilm", "input": ["a", ""]}), 400)
    assert error["param"] == "input.1"
    assert error_of(client.post("/v1/create_embeddings", json={"input": "a"}), 400)["param"] == "model"


def test_the_empty_key_clients_send_works_when_no_keys_are_configured(client):
    empty = {"Authorization": "Bearer EMPTY"}
    for prefix in PREFIXES:
        assert client.get(prefix + "/models", headers=empty).status_code == 200
    body = {"model": "nope", "query": "q", "documents": ["a"]}
    # Past authentication: the unknown model is what fails.
    error_of(client.post("/api/v1/beta/relevance", json=body, headers=empty), 404)


def test_api_keys_guard_every_prefix(make_app, redis_db):
    client = make_app(redis_db.url, api_keys=("a", "b")).test_client()
    body = {"model": "nope", "query": "q", "documents": ["a"]}
    for prefix in PREFIXES:
        for key in (None, "EMPTY", "c"):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            error = error_of(client.get(prefix + "/models", headers=headers), 401)
            assert error["code"] == "invalid_api_key"
            error_of(client.post(prefix + "/beta/relevance", json=body, headers=headers), 401)
            error_of(client.post(prefix + "/create_embeddings", json=body, headers=headers), 401)
        assert client.get(prefix + "/models", headers={"Authorization": "Bearer b"}).status_code == 200
        key_a = {"Authorization": "Bearer a"}
        response = client.post(prefix + "/beta/relevance", json=body, headers=key_a)
        error_of(response, 404)
