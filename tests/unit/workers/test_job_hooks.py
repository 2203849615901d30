"""The worker's seams: the engine loader main is given, and the job hooks run_job calls."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from shared import keys
from shared.catalog import ModelKind, ModelSpec
from shared.errors import Cancelled, NotFound
from shared.jobs import EmbedJob, EmbedResult, Usage
from shared.status import PoolingStats
from workers import runtime, tasks
from workers.engines.base import Engine, Ticket
from workers.main import load_engines
from workers.publisher import RedisEventSink


class InstantEngine(Engine):
    """Finishes each job at once with one constant vector per input."""

    def __init__(self) -> None:
        self.jobs: list[EmbedJob] = []

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def submit(self, job, cancel: threading.Event) -> Ticket:
        self.jobs.append(job)
        ticket = Ticket(job, cancel)
        usage = Usage(prompt_tokens=len(job.inputs), completion_tokens=0, total_tokens=len(job.inputs))
        ticket.finish(EmbedResult(embeddings=[[1.0]] * len(job.inputs), usage=usage, input_tokens=[1]))
        return ticket

    def stats(self) -> PoolingStats:
        return PoolingStats(jobs_done=len(self.jobs))

    @property
    def active(self) -> int:
        return 0


class RecordingHooks(runtime.JobHooks):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str | None]] = []

    def job_started(self, job) -> None:
        self.calls.append(("started", job.job_id, None))

    def job_submitted(self, job) -> None:
        self.calls.append(("submitted", job.job_id, None))

    def job_ended(self, job, error) -> None:
        self.calls.append(("ended", job.job_id, type(error).__name__ if error else None))


@pytest.fixture
def worker_runtime(redis_db):
    """An installed runtime over :class:`InstantEngine` for model ``instant``, with recording hooks."""
    redis = redis_db.client()
    rt = runtime.Runtime(
        redis=redis, sink=RedisEventSink(redis), engines={"instant": InstantEngine()}, hooks=RecordingHooks()
    )
    runtime.install(rt)
    yield rt
    runtime.install(None)


@pytest.fixture
def reply_channel(redis_db):
    """A reply channel with a subscriber: run_job skips jobs nobody waits for."""
    channel = f"test-replies-{uuid.uuid4().hex[:8]}"
    pubsub = redis_db.client().pubsub()
    pubsub.subscribe(channel)
    yield channel
    pubsub.close()


def payload(model: str, reply_to: str) -> dict:
    job = EmbedJob(
        job_id=uuid.uuid4().hex, model=model, reply_to=reply_to, deadline=time.time() + 60, inputs=["a"]
    )
    return job.model_dump(mode="json")


def test_hooks_see_a_job_start_be_submitted_and_end(worker_runtime, reply_channel):
    job = payload("instant", reply_channel)
    assert tasks.run_job(job)["embeddings"] == 1
    job_id = job["job_id"]
    assert worker_runtime.hooks.calls == [
        ("started", job_id, None),
        ("submitted", job_id, None),
        ("ended", job_id, None),
    ]


def test_hooks_see_a_skipped_job_end_with_its_error(worker_runtime, reply_channel, redis_db):
    job = payload("instant", reply_channel)
    redis_db.client().set(keys.cancel_key(job["job_id"]), 1, ex=60)
    with pytest.raises(Cancelled):
        tasks.run_job(job)
    assert worker_runtime.hooks.calls == [
        ("started", job["job_id"], None),
        ("ended", job["job_id"], "Cancelled"),
    ]
    assert worker_runtime.engines["instant"].jobs == []


def test_hooks_see_a_job_for_a_model_not_loaded_end_with_not_found(worker_runtime, reply_channel):
    job = payload("elsewhere", reply_channel)
    with pytest.raises(NotFound):
        tasks.run_job(job)
    assert [call[0] for call in worker_runtime.hooks.calls] == ["started", "ended"]
    assert worker_runtime.hooks.calls[-1][2] == "NotFound"


def test_the_worker_loads_its_engines_with_the_loader_it_is_given(redis_db):
    specs = [ModelSpec(name=f"instant-{i}", kind=ModelKind.EMBEDDING, source="instant:") for i in range(2)]
    asked: list[str] = []

    def load(spec: ModelSpec, sink) -> Engine:
        asked.append(spec.name)
        return InstantEngine()

    engines = load_engines(specs, RedisEventSink(redis_db.client()), load)
    assert asked == ["instant-0", "instant-1"]
    assert all(isinstance(engine, InstantEngine) for engine in engines.values())
