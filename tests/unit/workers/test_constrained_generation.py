"""Constrained decoding in the generation engine, on the fake LM: constrained and free rows in one
batch, a matcher per choice, seeds, truthful logprobs, how choices end, and grammar errors."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import pytest

from shared.errors import InvalidRequest
from shared.jobs import ChoiceConstraint, Constraint, JsonSchemaConstraint, RegexConstraint
from tests.unit.workers.test_generation import ListSink, make_job, outcome, spec, submit
from workers.backends.fake_lm import FakeLM
from workers.engines.generation import GenerationEngine
from workers.engines.sampling import MIN_LOGPROB

SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}, "ok": {"type": "boolean"}},
    "required": ["n", "ok"],
    "additionalProperties": False,
}


@pytest.fixture
def run_engine() -> Iterator:
    """Factory: a started engine over a fake LM; stopped after the test."""
    engines: list[GenerationEngine] = []

    def make(lm: FakeLM) -> GenerationEngine:
        engines.append(GenerationEngine(lm, spec(), ListSink()))
        engines[-1].start()
        return engines[-1]

    yield make
    for engine in engines:
        engine.stop()


def constrained(constraint: Constraint, **kw: object):
    return make_job(**kw).model_copy(update={"constraint": constraint})


def test_constrained_and_free_rows_share_a_batch(run_engine) -> None:
    lm = FakeLM(step_delay=0.002)
    engine = run_engine(lm)
    free = submit(engine, make_job(prompt="abcdefg", max_tokens=40))
    # The fake echoes its prompt: greedy decoding under the grammar writes the same JSON.
    exact = submit(engine, constrained(JsonSchemaConstraint(json_schema=SCHEMA), prompt='{"n":42,"ok":true}'))
    # Its prompt is no JSON: the grammar alone decides each token, from the prefill's first on.
    sampled = [
        submit(
            engine,
            constrained(JsonSchemaConstraint(json_schema=SCHEMA), prompt="xyz", temperature=1.0, seed=s),
        )
        for s in range(6)
    ]

    choice = outcome(exact).choices[0]
    assert (choice.text, choice.finish_reason) == ('{"n":42,"ok":true}', "stop")
    for ticket in sampled:
        result = outcome(ticket)
        value = json.loads(result.choices[0].text)
        assert set(value) == {"n", "ok"} and 0 <= value["n"] <= 99 and isinstance(value["ok"], bool)
        assert result.choices[0].finish_reason == "stop"
    assert outcome(free).choices[0].text == ("abcdefg" * 6)[:40]
    assert max(rows for kind, rows in lm.calls if kind == "step") >= 3  # free and constrained together


def test_the_grammar_ending_ends_the_choice_without_an_eos_step(run_engine) -> None:
    engine = run_engine(FakeLM())
    result = outcome(submit(engine, constrained(ChoiceConstraint(choices=["yes", "no"]), prompt="no")))
    assert result.choices[0].text == "no" and result.choices[0].finish_reason == "stop"
    assert result.usage.completion_tokens == 2


def test_each_choice_has_its_own_matcher_and_seeds_reproduce(run_engine) -> None:
    engine = run_engine(FakeLM(peak=0.5))
    colours = ChoiceConstraint(choices=["red", "green", "blue", "cyan"])
    job = constrained(colours, prompt="Hello", n=12, temperature=1.0, seed=7)
    alone = [c.text for c in outcome(submit(engine, job)).choices]
    assert set(alone) <= set(colours.choices) and len(set(alone)) > 1

    # The same job next to free and other constrained jobs picks the same texts.
    others = [submit(engine, make_job(prompt="abc", max_tokens=30, temperature=1.0, seed=1))]
    others.append(
        submit(engine, constrained(RegexConstraint(pattern="[a-z]{5}"), prompt="q", temperature=1.0))
    )
    again = submit(engine, job.model_copy(update={"job_id": "again"}))
    assert [c.text for c in outcome(again).choices] == alone
    for ticket in others:
        outcome(ticket)


def test_logprobs_are_those_of_the_masked_distribution(run_engine) -> None:
    engine = run_engine(FakeLM())
    job = constrained(ChoiceConstraint(choices=["yes", "no"]), prompt="no", logprobs=5)
    first = outcome(submit(engine, job)).choices[0].logprobs[0]
    possible = [t for t in first.top if t.logprob > MIN_LOGPROB]
    assert sorted(t.token for t in possible) == ["n", "y"]  # every other token is impossible
    assert math.isclose(sum(math.exp(t.logprob) for t in possible), 1.0, rel_tol=1e-4)
    assert first.token == "n" and first.logprob == possible[0].logprob


def test_max_tokens_cuts_a_constrained_choice_with_length(run_engine) -> None:
    engine = run_engine(FakeLM())
    letters = RegexConstraint(pattern="[a-c]{20}")
    result = outcome(submit(engine, constrained(letters, prompt="abc", max_tokens=5)))
    assert result.choices[0].text == "abcab" and result.choices[0].finish_reason == "length"


def test_a_grammar_that_runs_out_of_work_fails_its_job_only(run_engine) -> None:
    engine = run_engine(FakeLM(peak=0.0))
    free = submit(engine, make_job(prompt="abc", max_tokens=150))
    hostile = RegexConstraint(pattern="([a-z]{0,200}){0,200}q", param="structured_outputs")
    doomed = submit(engine, constrained(hostile, prompt="abc", temperature=1.0, seed=0, max_tokens=400))

    assert doomed.wait(20)
    with pytest.raises(InvalidRequest, match="too many") as caught:
        doomed.outcome()
    assert caught.value.param == "structured_outputs"
    assert len(outcome(free).choices[0].text) == 150


def test_a_spec_the_library_refuses_is_refused_at_submit(run_engine) -> None:
    engine = run_engine(FakeLM())
    with pytest.raises(InvalidRequest) as caught:
        submit(engine, constrained(RegexConstraint(pattern="(", param="structured_outputs"), prompt="a"))
    assert caught.value.param == "structured_outputs"
    assert engine.active == 0
