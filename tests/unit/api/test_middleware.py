"""The dispatcher's middleware chain: the order of its hooks, and what an exception in one does."""

from __future__ import annotations

import logging

import pytest

from api.middleware import DispatchMiddleware, MiddlewareChain, RequestContext
from shared.errors import RateLimited
from shared.events import DoneEvent
from shared.jobs import EmbedJob, EmbedResult, Usage

JOB = EmbedJob(job_id="j1", model="m", reply_to="r", deadline=0.0, inputs=["x"])
RESULT = EmbedResult(embeddings=[[1.0]], usage=Usage(prompt_tokens=1, total_tokens=1), input_tokens=[1])


class Recorder(DispatchMiddleware):
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls

    def before_submit(self, job, context) -> None:
        self.calls.append(f"{self.name}.before_submit")

    def after_submit(self, job, context) -> None:
        self.calls.append(f"{self.name}.after_submit")

    def on_event(self, job, context, event) -> None:
        self.calls.append(f"{self.name}.on_event")

    def after_result(self, job, context, outcome) -> None:
        self.calls.append(f"{self.name}.after_result")


def run_all_hooks(chain: MiddlewareChain, context: RequestContext) -> None:
    chain.before_submit(JOB, context)
    chain.after_submit(JOB, context)
    chain.on_event(JOB, context, DoneEvent(job_id=JOB.job_id, result=RESULT))
    chain.after_result(JOB, context, RESULT)


def test_before_hooks_and_events_run_in_order_after_hooks_in_reverse() -> None:
    calls: list[str] = []
    chain = MiddlewareChain([Recorder("a", calls), Recorder("b", calls)])
    chain.add(Recorder("c", calls))
    run_all_hooks(chain, RequestContext())
    assert calls == [
        *("a.before_submit", "b.before_submit", "c.before_submit"),
        *("c.after_submit", "b.after_submit", "a.after_submit"),
        *("a.on_event", "b.on_event", "c.on_event"),
        *("c.after_result", "b.after_result", "a.after_result"),
    ]


def test_the_base_class_hooks_do_nothing() -> None:
    run_all_hooks(MiddlewareChain([DispatchMiddleware()]), RequestContext())


def test_a_before_hook_that_raises_refuses_the_job_and_stops_the_chain() -> None:
    calls: list[str] = []

    class Refuse(DispatchMiddleware):
        def before_submit(self, job, context) -> None:
            raise RateLimited("no")

    chain = MiddlewareChain([Recorder("a", calls), Refuse(), Recorder("b", calls)])
    with pytest.raises(RateLimited):
        chain.before_submit(JOB, RequestContext())
    assert calls == ["a.before_submit"]


def test_an_after_hook_that_raises_is_logged_and_the_others_still_run(caplog) -> None:
    calls: list[str] = []

    class Broken(DispatchMiddleware):
        def after_result(self, job, context, outcome) -> None:
            raise RuntimeError("a bug")

    chain = MiddlewareChain([Recorder("a", calls), Broken(), Recorder("b", calls)])
    chain.remove(chain.middleware[0])
    chain.add(Recorder("a", calls))
    with caplog.at_level(logging.ERROR, logger="api.middleware"):
        chain.after_result(JOB, RequestContext(), RESULT)
    assert calls == ["a.after_result", "b.after_result"]
    assert "Broken.after_result" in caplog.text


def test_hooks_get_the_context_they_were_given() -> None:
    seen: list[RequestContext] = []

    class Seer(DispatchMiddleware):
        def after_result(self, job, context, outcome) -> None:
            seen.append(context)

    context = RequestContext(rate_subject="someone")
    MiddlewareChain([Seer()]).after_result(JOB, context, RESULT)
    assert seen == [context] and seen[0].client_gone() is False
