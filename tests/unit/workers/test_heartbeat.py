"""The heartbeat writes a typed WorkerStatus, with each engine's counters in its kind's model."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest

from shared import keys
from shared.catalog import ModelKind, ModelSpec
from shared.jobs import EmbedJob, GenerateJob, SamplingParams
from shared.status import GenerationStats, PoolingStats, WorkerReport, WorkerStatus
from workers.backends.fake_lm import FakeLM
from workers.engines.generation import GenerationEngine
from workers.engines.pooling import EmbeddingEngine
from workers.heartbeat import Heartbeat

WAIT_S = 30.0


class NullSink:
    def publish(self, messages) -> None:
        pass


class CharEmbedder:
    """Two dimensions, one token per character."""

    dimension = 2
    vocab_size = 256

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(text) for text in texts]

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.array([[1.0, 0.0]] * len(texts), dtype=np.float32)


def job_fields(model: str) -> dict:
    return {"job_id": uuid.uuid4().hex, "model": model, "reply_to": "test", "deadline": time.time() + 60}


@pytest.fixture
def engines():
    """A generation and an embedding engine over fakes, each having run one job."""
    chat = GenerationEngine(FakeLM(), ModelSpec(name="chat", kind=ModelKind.CHAT, source="fake"), NullSink())
    embed = EmbeddingEngine(CharEmbedder(), ModelSpec(name="embed", kind=ModelKind.EMBEDDING, source="fake"))
    for engine in (chat, embed):
        engine.start()
    try:
        jobs = [
            (chat, GenerateJob(**job_fields("chat"), prompts=["abc"], sampling=SamplingParams(max_tokens=3))),
            (embed, EmbedJob(**job_fields("embed"), inputs=["a", "bc"])),
        ]
        for engine, job in jobs:
            ticket = engine.submit(job, threading.Event())
            assert ticket.wait(WAIT_S)
            ticket.outcome()
        yield {"chat": chat, "embed": embed}
    finally:
        for engine in (chat, embed):
            engine.stop()


def test_the_engines_counters_travel_in_the_report_with_their_kind(engines):
    report = WorkerReport(engines={name: engine.stats() for name, engine in engines.items()})
    back = WorkerReport.model_validate_json(report.model_dump_json())
    chat, embed = back.engines["chat"], back.engines["embed"]
    assert isinstance(chat, GenerationStats) and chat.jobs_done == 1 and chat.tokens_generated == 3
    assert isinstance(embed, PoolingStats) and embed.jobs_done == 1 and embed.inputs_done == 2


def test_a_beat_writes_a_worker_status_and_a_drain_says_so(redis_db):
    redis = redis_db.client()
    worker_id = f"test-heartbeat-{uuid.uuid4().hex[:6]}"
    report = WorkerReport(
        slots={"chat": 2}, busy=1, running=["job-1"], engines={"chat": GenerationStats(steps=4)}
    )
    heartbeat = Heartbeat(redis, worker_id, ["chat"], ttl=10, report=lambda: report, healthy=lambda: True)
    try:
        heartbeat.beat()
        status = WorkerStatus.decode(redis.get(keys.worker_key(worker_id)))
        assert status is not None
        assert (status.id, status.models, status.draining) == (worker_id, ["chat"], False)
        assert status.slots == {"chat": 2} and status.running == ["job-1"]
        assert status.engines["chat"] == GenerationStats(steps=4)
        assert abs(status.beat_at - time.time()) < 5
        assert redis.zscore(keys.model_workers_key("chat"), worker_id) is not None

        heartbeat.drain()
        status = WorkerStatus.decode(redis.get(keys.worker_key(worker_id)))
        assert status.draining
        assert redis.zscore(keys.model_workers_key("chat"), worker_id) is None
    finally:
        heartbeat.stop()
    assert redis.get(keys.worker_key(worker_id)) is None
