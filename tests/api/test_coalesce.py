"""Coalescing embedding requests into shared rq jobs, against real Redis and a real MiniLM worker."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from rq.job import Job
from rq.serializers import JSONSerializer

from api.middleware import DispatchMiddleware, RequestContext
from shared.errors import Cancelled, DeadlineExceeded, InternalError, InvalidRequest, ServiceUnavailable
from shared.events import DoneEvent
from shared.jobs import EmbedJob

TEXTS = ["a cat", "a dog on a mat", "the quick brown fox jumps", "hi"]


@pytest.fixture
def services(make_app, redis_server, fleet):
    """An app on the session's database, where the fleet's MiniLM worker serves."""
    return make_app(redis_server.url, request_timeout=30).extensions["modelyard"]


def new_job(services, inputs, deadline_s: float = 30.0) -> EmbedJob:
    return EmbedJob(
        job_id=services.dispatcher.new_job_id(),
        model="minilm",
        reply_to=services.router.channel,
        deadline=time.time() + deadline_s,
        inputs=inputs,
    )


def spec(services, coalesce_inputs: int, *, busy: bool = True):
    """minilm merging up to ``coalesce_inputs`` inputs; if ``busy``, every request waits as if its
    workers were busy (no job in flight is allowed) until that many are pending."""
    update = {"coalesce_inputs": coalesce_inputs, **({"coalesce_in_flight": 0} if busy else {})}
    return services.catalog.resolve("minilm").model_copy(update=update)


def alone(services, inputs):
    """The request's result as its own job (coalescing off)."""
    return services.coalescer.embed(new_job(services, inputs), spec(services, 1), RequestContext())[1]


@pytest.fixture
def middleware(services):
    """Adds dispatcher middleware for one test (after the app's own); removes it afterwards."""
    added = []

    def add(probe: DispatchMiddleware):
        services.dispatcher.middleware.add(probe)
        added.append(probe)
        return probe

    yield add
    for probe in added:
        services.dispatcher.middleware.remove(probe)


def run_together(services, inputs_per_request, model_spec):
    barrier = threading.Barrier(len(inputs_per_request))

    def call(inputs):
        barrier.wait()
        try:
            return services.coalescer.embed(new_job(services, inputs), model_spec, RequestContext())
        except Exception as exc:  # returned, so the test sees every request's outcome
            return exc

    with ThreadPoolExecutor(len(inputs_per_request)) as pool:
        return list(pool.map(call, inputs_per_request))


def test_concurrent_requests_share_one_job_and_get_their_own_results(services) -> None:
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


def test_a_bad_input_fails_only_its_own_request(services) -> None:
    requests = [[TEXTS[0]], [[10**9]], [TEXTS[1]], [TEXTS[3]]]
    outcomes = run_together(services, requests, spec(services, 4))

    bad = outcomes[1]
    assert isinstance(bad, InvalidRequest) and bad.param == "input.0"
    for inputs, outcome in zip(requests, outcomes, strict=True):
        if inputs != [[10**9]]:
            np.testing.assert_allclose(outcome[1].embeddings, alone(services, inputs).embeddings, atol=1e-5)


def test_requests_leave_the_pending_batch_when_their_client_goes_or_time_runs_out(services) -> None:
    model_spec = spec(services, 64)  # never full: both requests stay pending
    started = time.monotonic()
    with pytest.raises(Cancelled, match="client went away"):
        services.coalescer.embed(new_job(services, [TEXTS[0]]), model_spec, RequestContext(lambda: True))
    with pytest.raises(DeadlineExceeded, match="deadline"):
        services.coalescer.embed(new_job(services, [TEXTS[0]], deadline_s=0.3), model_spec, RequestContext())
    assert time.monotonic() - started < 3
    assert all(not group.pending for group in services.coalescer._groups.values())


def test_under_light_load_every_request_is_its_own_job(services) -> None:
    model_spec = spec(services, 64, busy=False)
    for text in TEXTS:
        job = new_job(services, [text])
        job_id, result = services.coalescer.embed(job, model_spec, RequestContext())
        assert job_id == job.job_id and len(result.embeddings) == 1


class RecordSubmits(DispatchMiddleware):
    """When each job is sent and its inputs (the real dispatcher still sends it)."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, list]] = []

    def before_submit(self, job, context) -> None:
        self.sent.append((time.perf_counter(), list(job.inputs)))

    def inputs(self) -> list[list]:
        return [inputs for _, inputs in self.sent]


def test_the_next_job_is_sent_before_the_last_ones_requests_are_answered(services, middleware) -> None:
    """Answering wakes a request thread each; the model's worker must not wait behind them."""
    sent_at = middleware(RecordSubmits()).sent
    answered_at: dict[str, float] = {}
    barrier = threading.Barrier(3)

    def call(text):
        barrier.wait()
        services.coalescer.embed(new_job(services, [text]), spec(services, 2), RequestContext())
        answered_at[text] = time.perf_counter()

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(call, TEXTS[:3]))

    # Two requests filled the first job; the third waited behind it and went as the next one.
    assert [len(inputs) for _, inputs in sent_at] == [2, 1]
    (first_sent, first_inputs), (second_sent, _) = sent_at
    assert all(second_sent < answered_at[text] for text in first_inputs)


def test_a_lone_surrogate_in_a_coalesced_job_fails_only_its_own_request(services, middleware) -> None:
    """A job built past the API's checks carries the surrogate to the real worker's tokenizer."""
    sent = middleware(RecordSubmits())
    requests = [[TEXTS[0]], ["poisoned \ud800 input"], [TEXTS[1], TEXTS[2]], [TEXTS[3]]]
    outcomes = run_together(services, requests, spec(services, 5))

    first = sent.inputs()[0]  # one job first
    assert sorted(map(str, first)) == sorted(map(str, [t for r in requests for t in r]))
    bad = outcomes[1]
    assert isinstance(bad, InvalidRequest) and bad.param == "input.0" and "invalid Unicode" in bad.message
    for inputs, outcome in zip(requests, outcomes, strict=True):
        if outcome is not bad:
            np.testing.assert_allclose(outcome[1].embeddings, alone(services, inputs).embeddings, atol=1e-5)


CHOKE = "the worker fails on this input"


class FailJobsWith(DispatchMiddleware):
    """Jobs that carry ``CHOKE`` end with ``error``, as from a worker that failed on that input.

    The job still runs on the real worker; only its outcome is replaced, as its done event arrives.
    """

    def __init__(self, error) -> None:
        self.error = error

    def on_event(self, job, context, event) -> None:
        if isinstance(event, DoneEvent) and CHOKE in job.inputs:
            raise self.error


def test_an_internal_error_of_a_coalesced_job_makes_its_requests_run_alone(services, middleware) -> None:
    middleware(FailJobsWith(InternalError("the model failed to run this request")))
    sent = middleware(RecordSubmits())
    requests = [[TEXTS[0]], [CHOKE], [TEXTS[1]], [TEXTS[3]]]
    outcomes = run_together(services, requests, spec(services, 4))

    inputs_sent = sent.inputs()
    assert len(inputs_sent[0]) == 4 and len(inputs_sent) == 1 + len(requests)  # the shared job, then one each
    assert isinstance(outcomes[1], InternalError)
    for inputs, outcome in zip(requests, outcomes, strict=True):
        if inputs != [CHOKE]:
            np.testing.assert_allclose(outcome[1].embeddings, alone(services, inputs).embeddings, atol=1e-5)


def test_a_failure_that_is_not_about_an_input_stays_shared(services, middleware) -> None:
    middleware(FailJobsWith(ServiceUnavailable("no live worker", retry_after=1)))
    sent = middleware(RecordSubmits())
    outcomes = run_together(services, [[TEXTS[0]], [CHOKE], [TEXTS[1]]], spec(services, 3))
    assert len(sent.inputs()) == 1  # nobody ran again alone
    assert all(isinstance(outcome, ServiceUnavailable) for outcome in outcomes)
