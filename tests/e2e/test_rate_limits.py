"""Per-key request and token limits, shared by every API process through Redis."""

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import openai
import pytest

from harness import start_api, stop_process
from shared import keys

#: A try takes well under a second: two in a row never both straddle a minute's end.
TRIES = 2


@dataclass
class LimitedApi:
    url: str
    #: The (alice, bob) keys of each try: none is used by another try or another test.
    keys: list[tuple[str, str]]

    def clients(self, attempt: int) -> tuple[openai.OpenAI, openai.OpenAI]:
        alice, bob = (
            openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0) for key in self.keys[attempt]
        )
        return alice, bob


@pytest.fixture
def limited_api(base_env, fleet, tmp_path):
    tag = uuid.uuid4().hex[:8]  # the session's Redis keeps a window's counters after the test
    pairs = [(f"alice-{tag}-{n}", f"bob-{tag}-{n}") for n in range(TRIES)]
    env = {
        **base_env,
        "MODELYARD_API_KEYS": ",".join(key for pair in pairs for key in pair),
        "MODELYARD_RATE_LIMIT_RPM": "3",
        "MODELYARD_RATE_LIMIT_TPM": "40",
    }
    server, log = start_api(env, tmp_path / "api.log")
    yield LimitedApi(server.url, pairs)
    stop_process(server.proc)
    log.close()


def in_one_window(api: LimitedApi, scenario: Callable[[openai.OpenAI, openai.OpenAI], None]) -> None:
    """Run ``scenario(alice, bob)``. Counters are per wall-clock minute (``keys.RATE_WINDOW_S``): a
    try that fails after a window's end cut it in two runs again, on keys no request has touched,
    instead of the test waiting for a fresh minute."""
    for attempt in range(TRIES):
        window = int(time.time() // keys.RATE_WINDOW_S)
        try:
            scenario(*api.clients(attempt))
            return
        except (Exception, pytest.fail.Exception):
            if attempt == TRIES - 1 or int(time.time() // keys.RATE_WINDOW_S) == window:
                raise


def test_requests_per_minute_per_key(limited_api):
    body = {"model": "tiny-reranker", "query": "q", "documents": ["d"]}

    def scenario(alice: openai.OpenAI, bob: openai.OpenAI) -> None:
        for _ in range(3):
            alice.post("/rerank", cast_to=object, body=body)
        with pytest.raises(openai.RateLimitError) as caught:
            alice.post("/rerank", cast_to=object, body=body)
        assert 1 <= int(caught.value.response.headers["Retry-After"]) <= 60
        # Another key has its own budget.
        assert bob.post("/rerank", cast_to=object, body=body)

    in_one_window(limited_api, scenario)


def test_tokens_per_minute_per_key(limited_api):
    def scenario(_alice: openai.OpenAI, bob: openai.OpenAI) -> None:
        used = bob.embeddings.create(
            model="minilm", input=["a long sentence about cats " * 10]
        ).usage.total_tokens
        assert used > 40
        with pytest.raises(openai.RateLimitError) as caught:
            bob.embeddings.create(model="minilm", input="short")
        assert caught.value.code == "tokens_exceeded"

    in_one_window(limited_api, scenario)
