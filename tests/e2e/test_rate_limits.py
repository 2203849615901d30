"""Per-key request and token limits, shared by every API process through Redis."""

import time

import openai
import pytest

from tests.support import start_api, stop_process


@pytest.fixture
def limited_api(base_env, fleet, tmp_path):
    env = {
        **base_env,
        "MODELYARD_API_KEYS": "alice,bob",
        "MODELYARD_RATE_LIMIT_RPM": "3",
        "MODELYARD_RATE_LIMIT_TPM": "40",
    }
    server, log = start_api(env, tmp_path / "api.log")
    yield server
    stop_process(server.proc)
    log.close()


def fresh_window() -> None:
    """Counters are per wall-clock minute: start well inside one."""
    if time.time() % 60 > 45:
        time.sleep(61 - time.time() % 60)


def test_requests_per_minute_per_key(limited_api):
    fresh_window()
    alice = openai.OpenAI(base_url=limited_api.url + "/v1", api_key="alice", max_retries=0)
    bob = openai.OpenAI(base_url=limited_api.url + "/v1", api_key="bob", max_retries=0)
    body = {"model": "tiny-reranker", "query": "q", "documents": ["d"]}
    for _ in range(3):
        alice.post("/rerank", cast_to=object, body=body)
    with pytest.raises(openai.RateLimitError) as caught:
        alice.post("/rerank", cast_to=object, body=body)
    assert 1 <= int(caught.value.response.headers["Retry-After"]) <= 60
    # Another key has its own budget.
    assert bob.post("/rerank", cast_to=object, body=body)


def test_tokens_per_minute_per_key(limited_api):
    fresh_window()
    bob = openai.OpenAI(base_url=limited_api.url + "/v1", api_key="bob", max_retries=0)
    used = bob.embeddings.create(
        model="minilm", input=["a long sentence about cats " * 10]
    ).usage.total_tokens
    assert used > 40
    with pytest.raises(openai.RateLimitError) as caught:
        bob.embeddings.create(model="minilm", input="short")
    assert caught.value.code == "tokens_exceeded"
