"""A bad input fails only its own job: real models, jobs submitted straight to the engines.

Jobs can reach a worker from anything that writes to Redis, past the API's checks; these jobs carry
what the API would refuse (lone surrogates) or what the model cannot run.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from shared.catalog import ModelKind, ModelSpec
from shared.errors import InternalError, InvalidRequest
from shared.jobs import ChatMessage
from tests.unit.workers.test_pooling import embed_job, outcome, rerank_job, spec
from workers.backends.embedding import Embedder
from workers.backends.rerank import Reranker
from workers.engines.pooling import EmbeddingEngine, RerankEngine

GOOD = ["a cat sits on the mat", "stock markets fell today", "hi", "a kitten is on the rug"]
LONE = "bad \ud800 input"


@pytest.fixture(scope="module")
def embedder(default_models_dir: Path) -> Embedder:
    return Embedder.load(spec("embedding", default_models_dir / "all-MiniLM-L6-v2"))


@pytest.fixture(scope="module")
def reranker(default_models_dir: Path) -> Reranker:
    return Reranker.load(spec("rerank", default_models_dir / "tiny-reranker"))


@pytest.fixture
def engines():
    started = []

    def make(cls, model, model_spec: ModelSpec):
        engine = cls(model, model_spec)
        started.append(engine)
        return engine

    yield make
    for engine in started:
        engine.stop()


def test_a_lone_surrogate_fails_its_own_job_and_names_its_input(embedder: Embedder, engines) -> None:
    engine = engines(EmbeddingEngine, embedder, spec("embedding"))
    first = engine.submit(embed_job(GOOD[:2]), threading.Event())
    poisoned = engine.submit(embed_job(["fine", LONE]), threading.Event())
    last = engine.submit(embed_job(GOOD[2:]), threading.Event())
    engine.start()  # the three jobs are pending together: one batch

    with pytest.raises(InvalidRequest) as info:
        outcome(poisoned)
    assert info.value.param == "input.1" and "invalid Unicode" in info.value.message
    reference = embedder.embed(GOOD)
    np.testing.assert_allclose(outcome(first).embeddings + outcome(last).embeddings, reference, atol=1e-5)
    stats = engine.stats()
    assert stats.batches == 1 and stats.forward_passes == 1  # the neighbours shared their pass
    assert stats.jobs_done == 2 and stats.jobs_failed == 1 and engine.active == 0


class ChokingEmbedder(Embedder):
    """The real MiniLM, except that a forward pass with an input containing ``choke`` fails."""

    def __init__(self, real: Embedder, error: Exception) -> None:
        super().__init__(real.model, real.max_tokens)
        self.error = error
        self.passes: list[list[str | list[int]]] = []

    def embed(self, inputs: list[str | list[int]]) -> np.ndarray:
        self.passes.append(list(inputs))
        if any(isinstance(item, str) and "choke" in item for item in inputs):
            raise self.error
        return super().embed(inputs)


@pytest.mark.parametrize(
    ("error", "expected"),
    [(RuntimeError("CUDA error: device-side assert"), InternalError), (InvalidRequest("no"), InvalidRequest)],
)
def test_a_failed_forward_pass_is_retried_in_halves_until_only_the_bad_input_fails(
    embedder: Embedder, engines, error: Exception, expected: type
) -> None:
    choking = ChokingEmbedder(embedder, error)
    engine = engines(EmbeddingEngine, choking, spec("embedding"))
    requests = [[GOOD[0]], [GOOD[1], GOOD[2]], ["choke on this"], [GOOD[3]], ["one more", "and another"]]
    tickets = [engine.submit(embed_job(inputs), threading.Event()) for inputs in requests]
    engine.start()

    with pytest.raises(expected):
        outcome(tickets[2])
    for inputs, ticket in zip(requests, tickets, strict=True):
        if ticket is not tickets[2]:
            np.testing.assert_allclose(outcome(ticket).embeddings, embedder.embed(inputs), atol=1e-5)
    assert len(choking.passes[0]) == 7  # every input shared the first pass, which failed
    assert ["choke on this"] in choking.passes  # the bad input ended up alone
    assert len(choking.passes) <= 1 + 2 * 3  # bisection: at most two passes per level of 7 inputs
    assert engine.stats().jobs_failed == 1 and engine.stats().jobs_done == 4


def test_a_failing_pass_of_one_job_is_not_bisected(embedder: Embedder, engines) -> None:
    choking = ChokingEmbedder(embedder, RuntimeError("boom"))
    engine = engines(EmbeddingEngine, choking, spec("embedding"))
    engine.start()
    with pytest.raises(InternalError):
        outcome(engine.submit(embed_job(["fine", "choke", "also fine"]), threading.Event()))
    assert len(choking.passes) == 1


def test_rerank_a_lone_surrogate_in_a_document_or_query_fails_its_own_job(
    reranker: Reranker, engines
) -> None:
    engine = engines(RerankEngine, reranker, spec("rerank"))
    good = engine.submit(rerank_job("cats", ["a kitten", "a dog"]), threading.Event())
    bad_document = engine.submit(rerank_job("cats", ["a kitten", LONE]), threading.Event())
    bad_query = engine.submit(rerank_job(LONE, ["a kitten"]), threading.Event())
    engine.start()
    with pytest.raises(InvalidRequest) as info:
        outcome(bad_document)
    assert info.value.param == "documents.1"
    with pytest.raises(InvalidRequest) as info:
        outcome(bad_query)
    assert info.value.param == "query"
    np.testing.assert_allclose(outcome(good).scores, reranker.score("cats", ["a kitten", "a dog"]), atol=1e-5)


def test_count_tokens_names_the_input_among_token_ids(embedder: Embedder) -> None:
    with pytest.raises(InvalidRequest) as info:
        embedder.count_tokens(["ok", [101, 102], LONE])
    assert info.value.param == "input.2"
    assert embedder.count_tokens(["ok 😀", [101, 102]]) == embedder.count_tokens(["ok 😀"]) + [2]


@pytest.fixture(scope="module")
def tiny_chat(default_models_dir: Path):
    from bootstrap.checkpoints import TINY_CHAT
    from workers.backends.causal_lm import CausalLM

    model_spec = ModelSpec(name="tiny", kind=ModelKind.CHAT, source=str(default_models_dir / TINY_CHAT))
    return CausalLM.load(model_spec)


def test_chat_and_completion_prompts_with_a_lone_surrogate_are_invalid_requests(tiny_chat) -> None:
    messages = [ChatMessage(role="user", content="hello"), ChatMessage(role="assistant", content=LONE)]
    with pytest.raises(InvalidRequest) as info:
        tiny_chat.chat_prompt(messages)
    assert info.value.param == "messages.1.content"
    with pytest.raises(InvalidRequest) as info:
        tiny_chat.completion_prompt(LONE)
    assert info.value.param == "prompt" and "invalid Unicode" in info.value.message
    assert tiny_chat.completion_prompt("fine 😀") == tiny_chat.completion_prompt("fine \U0001f600")
