"""``Dispatcher.run``: the middleware around a real job, and how a request that stops waiting ends.

A client that left is ``Cancelled`` (499); a request whose time ran out is ``DeadlineExceeded``
(504). Either way the job is taken out of its queue.
"""

from __future__ import annotations

import time

import pytest

from api.middleware import DispatchMiddleware, RequestContext
from harness import wait_until
from shared import keys
from shared.errors import Cancelled, DeadlineExceeded, ModelyardError
from shared.jobs import RerankJob


class Recorder(DispatchMiddleware):
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def before_submit(self, job, context) -> None:
        self.calls.append(("before_submit", job.job_id))

    def after_submit(self, job, context) -> None:
        self.calls.append(("after_submit", job.reply_to))

    def on_event(self, job, context, event) -> None:
        self.calls.append(("on_event", event.type))

    def after_result(self, job, context, outcome) -> None:
        self.calls.append(("after_result", type(outcome).__name__))


@pytest.fixture
def services(make_app, redis_server):
    """An app on the session's database, where the fleet serves (and ``queued_forever`` writes)."""
    return make_app(redis_server.url, request_timeout=30).extensions["modelyard"]


@pytest.fixture
def recorder(services):
    probe = Recorder()
    services.dispatcher.middleware.add(probe)
    yield probe
    services.dispatcher.middleware.remove(probe)


def rerank_job(services, model: str, deadline_s: float = 30.0) -> RerankJob:
    return RerankJob(
        job_id=services.dispatcher.new_job_id(),
        model=model,
        reply_to=services.router.channel,
        deadline=time.time() + deadline_s,
        query="q",
        documents=["a", "b"],
    )


@pytest.fixture
def queued_forever(redis_server):
    """A ghost heartbeat: admission queues ``ghost`` jobs, which no worker ever takes."""
    client = redis_server.client()
    client.zadd(keys.model_workers_key("ghost"), {"test-job-run": time.time() + 60})
    yield
    client.zrem(keys.model_workers_key("ghost"), "test-job-run")


def rq_status(redis_server, job_id: str) -> bytes | None:
    return redis_server.client().hget(f"rq:job:{job_id}", "status")


def test_the_hooks_see_a_real_job_from_submit_to_result(services, recorder, fleet) -> None:
    job = rerank_job(services, "tiny-reranker")
    with services.dispatcher.run(job, RequestContext()) as run:
        result = run.wait()
    assert len(result.scores) == 2
    assert recorder.calls == [
        ("before_submit", job.job_id),
        ("after_submit", services.router.channel),
        ("on_event", "done"),
        ("after_result", "RerankResult"),
    ]


def test_a_client_that_left_is_cancelled_not_timed_out(services, recorder, queued_forever, redis_server):
    job = rerank_job(services, "ghost")
    started = time.monotonic()
    with pytest.raises(Cancelled) as caught:
        with services.dispatcher.run(job, RequestContext(client_gone=lambda: True)) as run:
            run.wait()
    assert caught.value.status == 499 and caught.value.code == "cancelled"
    assert time.monotonic() - started < 5  # noticed at the first tick, not at the deadline
    assert recorder.calls[-1] == ("after_result", "Cancelled")
    wait_until(lambda: rq_status(redis_server, job.job_id) == b"canceled", 5, "the job to be cancelled")


def test_a_request_whose_time_ran_out_is_deadline_exceeded(services, recorder, queued_forever, redis_server):
    job = rerank_job(services, "ghost", deadline_s=0.5)
    with pytest.raises(DeadlineExceeded) as caught:
        with services.dispatcher.run(job, RequestContext()) as run:
            run.wait()
    assert caught.value.status == 504
    assert recorder.calls[-1] == ("after_result", "DeadlineExceeded")
    wait_until(lambda: rq_status(redis_server, job.job_id) == b"canceled", 5, "the job to be cancelled")


def test_leaving_a_run_before_its_job_ended_cancels_the_job(services, recorder, queued_forever, redis_server):
    job = rerank_job(services, "ghost")
    with services.dispatcher.run(job, RequestContext()):
        pass  # a stream whose client stopped reading before the first event
    assert recorder.calls[-1] == ("after_result", "Cancelled")
    wait_until(lambda: rq_status(redis_server, job.job_id) == b"canceled", 5, "the job to be cancelled")


def test_a_refused_job_gets_no_hook_after_its_refusal(services, recorder) -> None:
    with pytest.raises(ModelyardError) as caught:  # ghost has no live worker
        services.dispatcher.run(rerank_job(services, "ghost"), RequestContext())
    assert caught.value.status == 503
    assert [name for name, _ in recorder.calls] == ["before_submit"]
