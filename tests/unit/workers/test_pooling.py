"""Embedding and rerank engines: real models for the numbers, fakes for the batching rules."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from harness import wait_until
from shared.catalog import ModelSpec
from shared.errors import Cancelled, DeadlineExceeded, InternalError, InvalidRequest, ServiceUnavailable
from shared.jobs import EmbedJob, EmbedResult, GenerateJob, RerankJob, RerankResult
from workers.backends.embedding import Embedder
from workers.backends.rerank import Reranker
from workers.engines.base import Ticket
from workers.engines.pooling import EmbeddingEngine, RerankEngine, plan_passes, spread_passes

WAIT = 30.0
SENTENCES = [
    "a cat sits on the mat",
    "a kitten is on the rug",
    "stock markets fell today",
    "A much longer sentence about the weather, which was warm and sunny all week long in the small town.",
    "",
]


def embed_job(inputs: list[str], deadline: float | None = None) -> EmbedJob:
    return EmbedJob(
        job_id=uuid.uuid4().hex,
        model="all-MiniLM-L6-v2",
        reply_to="test",
        deadline=time.time() + 60 if deadline is None else deadline,
        inputs=inputs,
    )


def rerank_job(query: str, documents: list[str]) -> RerankJob:
    return RerankJob(
        job_id=uuid.uuid4().hex,
        model="tiny-reranker",
        reply_to="test",
        deadline=time.time() + 60,
        query=query,
        documents=documents,
    )


def outcome(ticket: Ticket):
    assert ticket.wait(WAIT), "the engine never finished the job"
    return ticket.outcome()


def spec(kind: str, source: Path | str = "unused", **extra) -> ModelSpec:
    return ModelSpec(name=f"test-{kind}", kind=kind, source=str(source), device="cpu", **extra)


@pytest.fixture(scope="module")
def embedder(default_models_dir: Path) -> Embedder:
    return Embedder.load(spec("embedding", default_models_dir / "all-MiniLM-L6-v2"))


@pytest.fixture(scope="module")
def reranker(default_models_dir: Path) -> Reranker:
    return Reranker.load(spec("rerank", default_models_dir / "tiny-reranker"))


@pytest.fixture
def engine_factory():
    """Build engines that are stopped after the test, whatever happens."""
    engines = []

    def make(cls, model, model_spec: ModelSpec, start: bool = True):
        engine = cls(model, model_spec)
        engines.append(engine)
        if start:
            engine.start()
        return engine

    yield make
    for engine in engines:
        engine.stop()


# -- plan_passes --------------------------------------------------------------------------------


def test_plan_passes_sorts_and_bounds_padded_tokens() -> None:
    lengths = [10, 3, 8, 3, 40, 5]
    passes = plan_passes(lengths, max_tokens=20)
    assert sorted(i for p in passes for i in p) == list(range(len(lengths)))
    for p in passes:
        assert len(p) == 1 or max(lengths[i] for i in p) * len(p) <= 20
    assert passes[0] == [1, 3, 5]  # shortest together: 5 * 3 <= 20
    assert passes[-1] == [4]  # over the budget on its own: a pass of its own


def test_plan_passes_one_pass_when_everything_fits() -> None:
    assert plan_passes([4, 2, 3], max_tokens=100) == [[1, 2, 0]]
    assert plan_passes([], max_tokens=100) == []


def test_spread_passes_halves_the_largest_until_every_stream_has_one() -> None:
    assert spread_passes([list(range(10))], 2, min_rows=4) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert spread_passes([list(range(16)), [16]], 3, min_rows=4) == [
        list(range(8)),
        list(range(8, 16)),
        [16],
    ]
    # None under min_rows: a pass of 7 stays whole; fewer ways than passes changes nothing.
    assert spread_passes([list(range(7))], 2, min_rows=4) == [list(range(7))]
    assert spread_passes([[0], [1], [2]], 2) == [[0], [1], [2]]


# -- Embedder and EmbeddingEngine with the real MiniLM ------------------------------------------


def test_embedder_vectors_are_unit_float32_and_semantic(embedder: Embedder) -> None:
    vectors = embedder.embed(SENTENCES[:3])
    assert vectors.dtype == np.float32 and vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cat, kitten, stocks = vectors
    assert cat @ kitten > cat @ stocks + 0.2


def test_embedder_truncates_long_inputs(embedder: Embedder) -> None:
    long = "word " * 2000
    assert embedder.count_tokens([long, "hi"]) == [embedder.max_tokens, 3]
    truncated = embedder.model.tokenizer.decode(
        embedder.model.tokenizer(long, truncation=True, max_length=embedder.max_tokens)["input_ids"],
        skip_special_tokens=True,
    )
    np.testing.assert_allclose(embedder.embed([long]), embedder.embed([truncated]), atol=1e-5)


def test_embedder_max_tokens_honours_a_smaller_context_length(default_models_dir: Path) -> None:
    small = Embedder.load(spec("embedding", default_models_dir / "all-MiniLM-L6-v2", context_length=16))
    assert small.max_tokens == 16
    assert small.count_tokens(["word " * 100]) == [16]


def test_engine_batch_equals_alone_and_keeps_order(embedder: Embedder, engine_factory) -> None:
    engine = engine_factory(EmbeddingEngine, embedder, spec("embedding"))
    together = outcome(engine.submit(embed_job(SENTENCES), threading.Event()))
    assert isinstance(together, EmbedResult)
    assert len(together.embeddings) == len(SENTENCES)
    for text, vector in zip(SENTENCES, together.embeddings, strict=True):
        alone = outcome(engine.submit(embed_job([text]), threading.Event())).embeddings[0]
        np.testing.assert_allclose(vector, alone, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together.embeddings, axis=1), 1.0, atol=1e-5)


def test_engine_reports_prompt_token_usage(embedder: Embedder, engine_factory) -> None:
    engine = engine_factory(EmbeddingEngine, embedder, spec("embedding"))
    result = outcome(engine.submit(embed_job(SENTENCES[:3]), threading.Event()))
    expected = sum(embedder.count_tokens(SENTENCES[:3]))
    assert result.usage.prompt_tokens == result.usage.total_tokens == expected
    assert result.usage.completion_tokens == 0


def test_jobs_submitted_together_share_one_forward_pass(embedder: Embedder, engine_factory) -> None:
    engine = engine_factory(EmbeddingEngine, embedder, spec("embedding"), start=False)
    first = engine.submit(embed_job(SENTENCES[:2]), threading.Event())
    second = engine.submit(embed_job(SENTENCES[2:]), threading.Event())
    assert engine.active == 2
    engine.start()
    a, b = outcome(first), outcome(second)
    stats = engine.stats()
    assert stats.batches == 1 and stats.forward_passes == 1
    assert stats.last_batch_jobs == 2 and stats.last_batch_inputs == len(SENTENCES)
    assert engine.active == 0
    expected = embedder.embed(SENTENCES)
    np.testing.assert_allclose(a.embeddings + b.embeddings, expected, atol=1e-5)


def test_busy_ms_counts_the_time_spent_running_batches(embedder: Embedder, engine_factory) -> None:
    engine = engine_factory(EmbeddingEngine, embedder, spec("embedding"))
    forward = engine._forward

    def slow_forward(items):
        time.sleep(0.05)
        return forward(items)

    engine._forward = slow_forward
    started = time.perf_counter()
    outcome(engine.submit(embed_job(SENTENCES[:2]), threading.Event()))
    # The batch's time is added just after its jobs are answered.
    wait_until(lambda: engine.stats().busy_ms > 0, 5, "the batch's busy time", interval=0.01)
    elapsed_ms = (time.perf_counter() - started) * 1000
    assert 50 <= engine.stats().busy_ms <= elapsed_ms + 1


def test_token_budget_splits_forward_passes(embedder: Embedder, engine_factory) -> None:
    engine = engine_factory(EmbeddingEngine, embedder, spec("embedding", max_batch_tokens=24), start=False)
    ticket = engine.submit(embed_job(SENTENCES), threading.Event())
    engine.start()
    result = outcome(ticket)
    assert engine.stats().forward_passes > 1
    np.testing.assert_allclose(result.embeddings, embedder.embed(SENTENCES), atol=1e-5)


def test_cancelled_and_expired_jobs_are_dropped(embedder: Embedder, engine_factory) -> None:
    engine = engine_factory(EmbeddingEngine, embedder, spec("embedding"), start=False)
    cancel = threading.Event()
    cancelled = engine.submit(embed_job(["cancel me"]), cancel)
    expired = engine.submit(embed_job(["too late"], deadline=time.time() - 1), threading.Event())
    live = engine.submit(embed_job(["still wanted"]), threading.Event())
    cancel.set()
    engine.start()
    with pytest.raises(Cancelled):
        outcome(cancelled)
    with pytest.raises(DeadlineExceeded):
        outcome(expired)
    assert len(outcome(live).embeddings) == 1
    stats = engine.stats()
    assert stats.last_batch_jobs == 1 and stats.last_batch_inputs == 1
    assert stats.jobs_cancelled == 1 and stats.jobs_expired == 1
    assert engine.active == 0


def test_submit_rejects_empty_and_foreign_jobs(embedder: Embedder, engine_factory) -> None:
    engine = engine_factory(EmbeddingEngine, embedder, spec("embedding"))
    with pytest.raises(InvalidRequest):
        engine.submit(embed_job([]), threading.Event())
    with pytest.raises(InvalidRequest):
        engine.submit(rerank_job("q", ["d"]), threading.Event())
    generate = GenerateJob(job_id="g", model="m", reply_to="r", deadline=time.time() + 60, prompts=["x"])
    with pytest.raises(InvalidRequest):
        engine.submit(generate, threading.Event())
    assert engine.active == 0


# -- batching rules with fakes ------------------------------------------------------------------


class FakeEmbedder:
    """One token per character; the forward pass can be held open or made to fail."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()
        self.fail_next = False
        self.calls: list[list[str]] = []

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(t) for t in texts]

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        self.entered.set()
        self.release.wait(WAIT)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("boom")
        return np.array([[float(len(t)), 1.0] for t in texts], dtype=np.float32)


def test_jobs_arriving_during_a_forward_pass_share_the_next(engine_factory) -> None:
    fake = FakeEmbedder()
    engine = engine_factory(EmbeddingEngine, fake, spec("embedding"))
    fake.release.clear()
    busy = engine.submit(embed_job(["busy"]), threading.Event())
    assert fake.entered.wait(WAIT)
    waiting = [engine.submit(embed_job(["x" * (i + 1), "yy"]), threading.Event()) for i in range(3)]
    assert engine.active == 4
    fake.release.set()
    outcome(busy)
    results = [outcome(t) for t in waiting]
    assert [r.embeddings[0][0] for r in results] == [1.0, 2.0, 3.0]
    assert len(fake.calls) == 2 and len(fake.calls[1]) == 6
    assert engine.stats().last_batch_jobs == 3


def test_model_error_fails_the_batch_and_engine_keeps_running(engine_factory, caplog) -> None:
    fake = FakeEmbedder()
    fake.fail_next = True
    engine = engine_factory(EmbeddingEngine, fake, spec("embedding"))
    with caplog.at_level("ERROR"):
        with pytest.raises(InternalError):
            outcome(engine.submit(embed_job(["a"]), threading.Event()))
    assert any(r.exc_info for r in caplog.records)  # logged with its traceback
    assert outcome(engine.submit(embed_job(["bb"]), threading.Event())).embeddings == [[2.0, 1.0]]
    assert engine.alive and engine.active == 0


def test_stop_fails_pending_jobs_and_later_submits(engine_factory) -> None:
    engine = engine_factory(EmbeddingEngine, FakeEmbedder(), spec("embedding"), start=False)
    pending = engine.submit(embed_job(["never run"]), threading.Event())
    engine.stop()
    with pytest.raises(ServiceUnavailable):
        outcome(pending)
    with pytest.raises(ServiceUnavailable):
        engine.submit(embed_job(["too late"]), threading.Event())
    assert engine.active == 0


def test_stop_joins_a_running_engine(engine_factory) -> None:
    engine = engine_factory(EmbeddingEngine, FakeEmbedder(), spec("embedding"))
    outcome(engine.submit(embed_job(["a"]), threading.Event()))
    assert engine.alive
    engine.stop()
    assert not engine.alive


def two_passes_at_once(fake: FakeEmbedder) -> FakeEmbedder:
    """``fake``, whose passes each wait until two are in the model at the same time."""
    inside = threading.Barrier(2, timeout=WAIT)

    def embed(texts: list[str]) -> np.ndarray:
        inside.wait()
        return FakeEmbedder.embed(fake, texts)

    fake.embed = embed
    return fake


def test_streams_run_forward_passes_at_once_and_share_what_waits(engine_factory) -> None:
    fake = two_passes_at_once(FakeEmbedder())
    engine = engine_factory(EmbeddingEngine, fake, spec("embedding", streams=2))
    first, second = (engine.submit(embed_job([text]), threading.Event()) for text in ("a", "bb"))
    assert [outcome(t).embeddings for t in (first, second)] == [[[1.0, 1.0]], [[2.0, 1.0]]]

    # Jobs queued while every stream is busy: one pass of the first stream that frees, or shared
    # with the other if it frees meanwhile; never a pass each.
    fake.embed = lambda texts: FakeEmbedder.embed(fake, texts)
    fake.release.clear()
    busy = [engine.submit(embed_job(["busy"]), threading.Event()) for _ in range(2)]
    wait_until(lambda: len(fake.calls) == 4, WAIT, "both streams in a pass", interval=0.01)
    queued = [engine.submit(embed_job(["x" * (i + 1)]), threading.Event()) for i in range(4)]
    fake.release.set()
    assert [outcome(t).embeddings[0][0] for t in busy + queued] == [4.0, 4.0, 1.0, 2.0, 3.0, 4.0]
    assert len(fake.calls) in (5, 6) and sum(len(call) for call in fake.calls[4:]) == 4


def test_one_big_job_is_cut_into_passes_for_the_idle_streams(engine_factory) -> None:
    fake = two_passes_at_once(FakeEmbedder())
    engine = engine_factory(EmbeddingEngine, fake, spec("embedding", streams=2))
    wait_until(lambda: engine._idle == 2, WAIT, "both streams idle", interval=0.01)
    texts = ["x" * (k % 5 + 1) for k in range(10)]
    result = outcome(engine.submit(embed_job(texts), threading.Event()))
    assert [vector[0] for vector in result.embeddings] == [float(len(t)) for t in texts]
    assert sorted(len(call) for call in fake.calls) == [5, 5]
    assert engine.stats().forward_passes == 2 and engine.active == 0


def test_a_poisoned_input_fails_only_its_job_however_the_streams_share_the_passes(engine_factory) -> None:
    fake = FakeEmbedder()

    def embed(texts: list[str]) -> np.ndarray:
        if "poison" in texts:
            raise RuntimeError("boom")
        return FakeEmbedder.embed(fake, texts)

    fake.embed = embed
    for _ in range(5):  # the streams split the two jobs differently from run to run
        engine = engine_factory(EmbeddingEngine, fake, spec("embedding", streams=2), start=False)
        good = engine.submit(embed_job(["y" * (k % 3 + 1) for k in range(16)]), threading.Event())
        bad = engine.submit(embed_job(["poison", "z"]), threading.Event())
        engine.start()
        assert [vector[0] for vector in outcome(good).embeddings] == [float(k % 3 + 1) for k in range(16)]
        with pytest.raises(InternalError):
            outcome(bad)
        assert engine.alive and engine.active == 0
        engine.stop()


def test_stop_joins_every_stream_and_a_dead_stream_is_not_alive(engine_factory) -> None:
    engine = engine_factory(EmbeddingEngine, FakeEmbedder(), spec("embedding", streams=3))
    outcome(engine.submit(embed_job(["a"]), threading.Event()))
    assert engine.alive and len(engine._threads) == 3
    started = time.monotonic()
    engine.stop()
    assert not any(thread.is_alive() for thread in engine._threads)
    assert time.monotonic() - started < 5


# -- Reranker and RerankEngine with the real tiny reranker --------------------------------------


def test_rerank_scores_in_unit_interval_in_document_order(reranker: Reranker, engine_factory) -> None:
    engine = engine_factory(RerankEngine, reranker, spec("rerank"))
    docs = ["a kitten is on the rug", "stock markets fell today", "", "cats " * 600]
    result = outcome(engine.submit(rerank_job("a cat sits on the mat", docs), threading.Event()))
    assert isinstance(result, RerankResult)
    assert len(result.scores) == len(docs)
    assert all(0.0 <= s <= 1.0 for s in result.scores)
    alone = [reranker.score("a cat sits on the mat", [doc])[0] for doc in docs]
    np.testing.assert_allclose(result.scores, alone, atol=1e-5)
    expected_tokens = sum(reranker.count_tokens("a cat sits on the mat", docs))
    assert result.usage.prompt_tokens == result.usage.total_tokens == expected_tokens
    assert max(reranker.count_tokens("q", docs)) == reranker.max_tokens


def test_rerank_jobs_with_different_queries_share_a_pass(reranker: Reranker, engine_factory) -> None:
    engine = engine_factory(RerankEngine, reranker, spec("rerank"), start=False)
    first = engine.submit(rerank_job("cats", ["a kitten", "a dog"]), threading.Event())
    second = engine.submit(rerank_job("money", ["stocks fell", "a kitten", "bonds"]), threading.Event())
    engine.start()
    a, b = outcome(first), outcome(second)
    assert engine.stats().forward_passes == 1
    money_docs = ["stocks fell", "a kitten", "bonds"]
    np.testing.assert_allclose(a.scores, reranker.score("cats", ["a kitten", "a dog"]), atol=1e-5)
    np.testing.assert_allclose(b.scores, reranker.score("money", money_docs), atol=1e-5)


def test_rerank_rejects_no_documents(reranker: Reranker, engine_factory) -> None:
    engine = engine_factory(RerankEngine, reranker, spec("rerank"))
    with pytest.raises(InvalidRequest) as info:
        engine.submit(rerank_job("q", []), threading.Event())
    assert info.value.param == "documents"
