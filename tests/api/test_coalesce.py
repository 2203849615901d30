"""Coalescing embedding requests into shared rq jobs, against real Redis and a real MiniLM worker."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from api import coalesce
from shared.errors import DeadlineExceeded, InvalidRequest
from shared.jobs import EmbedJob

TEXTS = ["a cat", "a dog on a mat", "the quick brown fox jumps", "hi"]


@pytest.fixture
def services(app, fleet):
    return app.extensions["modelyard"]


def new_job(services, inputs, deadline_s: float = 30.0) -> EmbedJob:
    return EmbedJob(
        job_id=services.dispatcher.new_job_id(),
        model="minilm",
        reply_to=services.router.channel,
        deadline=time.time() + deadline_s,
        inputs=inputs,
    )


def spec(services, coalesce_inputs: int):
    return services.catalog.resolve("minilm").model_copy(update={"coalesce_inputs": coalesce_inputs})


def alone(services, inputs):
    """The request's result as its own job (coalescing off)."""
    return services.coalescer.embed(new_job(services, inputs), spec(services, 1), lambda: False)[1]


@pytest.fixture
def busy(monkeypatch):
    """Every request waits as if the model's workers were busy, until ``coalesce_inputs`` are pending."""
    monkeypatch.setattr(coalesce, "IN_FLIGHT_PER_WORKER", 0)


def run_together(services, inputs_per_request, model_spec, client_gone=lambda: False):
    barrier = threading.Barrier(len(inputs_per_request))

    def call(inputs):
        barrier.wait()
        try:
            return services.coalescer.embed(new_job(services, inputs), model_spec, client_gone)
        except Exception as exc:  # returned, so the test sees every request's outcome
            return exc

    with ThreadPoolExecutor(len(inputs_per_request)) as pool:
        return list(pool.map(call, inputs_per_request))


def test_concurrent_requests_share_one_job_and_get_their_own_results(services, busy) -> None:
    requests = [[TEXTS[0]], [TEXTS[1], TEXTS[2]], [TEXTS[3]]]
    outcomes = run_together(services, requests, spec(services, 4))

    job_ids = {job_id for job_id, _ in outcomes}
    assert len(job_ids) == 1
    # One rq job with every request's inputs: what rq-dashboard shows is what ran.
    job = Job.fetch(job_ids.pop(), connection=services.redis, serializer=JSONSerializer)
    assert sorted(job.kwargs["payload"]["inputs"]) == sorted(TEXTS)
    for inputs, (_, result) in zip(requests, outcomes, strict=True):
        reference = alone(services, inputs)
        assert len(result.embeddings) == len(inputs)
        np.testing.assert_allclose(result.embeddings, reference.embeddings, atol=1e-5)
        assert result.usage == reference.usage
        assert result.input_tokens == reference.input_tokens


def test_a_bad_input_fails_only_its_own_request(services, busy) -> None:
    requests = [[TEXTS[0]], [[10**9]], [TEXTS[1]], [TEXTS[3]]]
    outcomes = run_together(services, requests, spec(services, 4))

    bad = outcomes[1]
    assert isinstance(bad, InvalidRequest) and bad.param == "input.0"
    for inputs, outcome in zip(requests, outcomes, strict=True):
        if inputs != [[10**9]]:
            np.testing.assert_allclose(outcome[1].embeddings, alone(services, inputs).embeddings, atol=1e-5)


def test_requests_leave_the_pending_batch_when_their_client_goes_or_time_runs_out(services, busy) -> None:
    model_spec = spec(services, 64)  # never full: both requests stay pending
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="client went away"):
        services.coalescer.embed(new_job(services, [TEXTS[0]]), model_spec, lambda: True)
    with pytest.raises(DeadlineExceeded, match="deadline"):
        services.coalescer.embed(new_job(services, [TEXTS[0]], deadline_s=0.3), model_spec, lambda: False)
    assert time.monotonic() - started < 3
    assert all(not group.pending for group in services.coalescer._groups.values())


def test_under_light_load_every_request_is_its_own_job(services) -> None:
    model_spec = spec(services, 64)
    for text in TEXTS:
        job = new_job(services, [text])
        job_id, result = services.coalescer.embed(job, model_spec, lambda: False)
        assert job_id == job.job_id and len(result.embeddings) == 1


def test_the_next_job_is_sent_before_the_last_ones_requests_are_answered(services, busy, monkeypatch) -> None:
    """Answering wakes a request thread each; the model's worker must not wait behind them."""
    sent_at: list[tuple[float, list]] = []
    submit = services.dispatcher.submit

    def recording_submit(job):
        sent_at.append((time.perf_counter(), job.inputs))
        return submit(job)

    monkeypatch.setattr(services.dispatcher, "submit", recording_submit)
    answered_at: dict[str, float] = {}
    barrier = threading.Barrier(3)

    def call(text):
        barrier.wait()
        services.coalescer.embed(new_job(services, [text]), spec(services, 2), lambda: False)
        answered_at[text] = time.perf_counter()

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(call, TEXTS[:3]))

    # Two requests filled the first job; the third waited behind it and went as the next one.
    assert [len(inputs) for _, inputs in sent_at] == [2, 1]
    (first_sent, first_inputs), (second_sent, _) = sent_at
    assert all(second_sent < answered_at[text] for text in first_inputs)
