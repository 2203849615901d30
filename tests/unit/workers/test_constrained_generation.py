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


def test_a_forced_run_is_taken_in_one_step_as_one_step_a_token_would_take_it(run_engine) -> None:
    # The schema forces '{"n":' and ',"ok":' (several tokens each). A batch that takes several
    # tokens a row feeds each run in one step; an unjoinable fake (one token a row a step) takes
    # the same tokens one step each. Sampled rows too: a forced token uses no draw either way.
    schema = JsonSchemaConstraint(json_schema=SCHEMA)
    jobs = [
        constrained(schema, prompt='{"n":42,"ok":true}'),
        constrained(schema, prompt="xyz", temperature=1.0, seed=3),
        constrained(schema, prompt='{"n":42,"ok":true}', max_tokens=4),  # cut inside a run
        constrained(schema, prompt='{"n":42,"ok":true}', stop=[":4"]),  # stopped inside one
    ]
    results = {}
    for joinable in (True, False):
        engine = run_engine(FakeLM(joinable=joinable))
        done = [outcome(submit(engine, job)) for job in jobs]
        results[joinable] = [(r.choices[0].text, r.choices[0].finish_reason, r.usage) for r in done]
        stats = engine.stats()
        assert (stats.tokens_forced > 0) == joinable
        if joinable:
            assert stats.steps + stats.prefills + stats.tokens_forced == stats.tokens_generated
    assert results[True] == results[False]
    assert [r[:2] for r in results[True]][2:] == [('{"n"', "length"), ('{"n"', "stop")]


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


@pytest.fixture
def ways(monkeypatch) -> dict[str, int]:
    """Counts of the matchers' forced() answers and allows() checks, to see which ways rows went."""
    from workers.constraints.llguidance_backend import LLGuidanceMatcher

    seen = {"forced": 0, "allowed": 0, "refused": 0}
    forced, allows = LLGuidanceMatcher.forced, LLGuidanceMatcher.allows

    def spy_forced(self):
        run = forced(self)
        seen["forced"] += bool(run)
        return run

    def spy_allows(self, token):
        ok = allows(self, token)
        seen["allowed" if ok else "refused"] += 1
        return ok

    monkeypatch.setattr(LLGuidanceMatcher, "forced", spy_forced)
    monkeypatch.setattr(LLGuidanceMatcher, "allows", spy_allows)
    return seen


LONG = {
    "type": "object",
    "properties": {
        "word": {"type": "string", "maxLength": 12},
        "n": {"type": "integer", "minimum": 0, "maximum": 999},
        "list": {"type": "array", "items": {"enum": ["Hello", "world", "STOP"]}, "maxItems": 4},
    },
    "required": ["word", "n", "list"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("spec", "prompt"),
    [
        (JsonSchemaConstraint(json_schema=LONG), '{"word":"Hello world","n":7,"list":["STOP"]}'),
        (JsonSchemaConstraint(json_schema=LONG), "Hello world, no JSON here"),
        (JsonSchemaConstraint(json_schema=SCHEMA), "xyz"),
        (RegexConstraint(pattern="[a-c]{3}(Hello| world){1,4}"), "abcHello worldzz"),
    ],
)
def test_greedy_picks_are_the_masked_picks(run_engine, ways, spec, prompt) -> None:
    # Forced tokens and unmasked draws checked by the matcher pick what the mask would: a job that
    # asks for logprobs is masked at every step, so it is the reference.
    engine = run_engine(FakeLM(peak=0.5))
    for peak_prompt in (prompt, prompt[::-1]):
        free = submit(engine, constrained(spec, prompt=peak_prompt, max_tokens=60))
        masked = submit(engine, constrained(spec, prompt=peak_prompt, max_tokens=60, logprobs=0))
        a, b = outcome(free).choices[0], outcome(masked).choices[0]
        assert (a.text, a.finish_reason) == (b.text, b.finish_reason)
    assert ways["forced"] and ways["allowed"] and ways["refused"]  # every way was taken


def test_sampled_choices_stay_valid_over_many_seeds(run_engine, ways) -> None:
    engine = run_engine(FakeLM(peak=0.0))
    spec = JsonSchemaConstraint(json_schema=LONG)
    sampled = {"prompt": "xyz", "temperature": 1.0, "max_tokens": 200}
    tickets = [submit(engine, constrained(spec, **sampled, seed=s)) for s in range(60)]
    # Truncated draws go masked (truncating unmasked logits is not truncating masked ones).
    truncated = {**sampled, "temperature": 0.8, "top_k": 5, "top_p": 0.9}
    tickets += [submit(engine, constrained(spec, **truncated, seed=s)) for s in range(10)]
    texts = []
    for ticket in tickets:
        choice = outcome(ticket).choices[0]
        assert choice.finish_reason == "stop"
        value = json.loads(choice.text)
        assert set(value) == {"word", "n", "list"} and len(value["word"]) <= 12 and 0 <= value["n"] <= 999
        assert set(value["list"]) <= {"Hello", "world", "STOP"} and len(value["list"]) <= 4
        texts.append(choice.text)
    assert len(set(texts)) > 50
    assert ways["allowed"] and ways["refused"]
    # The same seed gives the same text again.
    again = submit(engine, constrained(spec, **sampled, seed=3))
    assert outcome(again).choices[0].text == texts[3]


def test_logprob_rows_stay_masked_beside_drawn_rows(run_engine) -> None:
    engine = run_engine(FakeLM(peak=0.0))
    spec = JsonSchemaConstraint(json_schema=SCHEMA)
    drawn = [submit(engine, constrained(spec, prompt="q", temperature=1.0, seed=s)) for s in range(4)]
    job = constrained(spec, prompt="q", temperature=1.0, seed=9, logprobs=20)
    choice = outcome(submit(engine, job)).choices[0]
    json.loads(choice.text)
    for entry in choice.logprobs:
        possible = [t for t in entry.top if t.logprob > MIN_LOGPROB]
        assert entry.logprob > MIN_LOGPROB and entry.token in {t.token for t in possible}
        assert math.isclose(sum(math.exp(t.logprob) for t in possible), 1.0, rel_tol=1e-3)
    assert any(math.isclose(e.logprob, 0.0, abs_tol=1e-6) for e in choice.logprobs)  # a forced token
    for ticket in drawn:
        json.loads(outcome(ticket).choices[0].text)


def test_a_refused_draw_masks_the_next_unforced_steps_for_a_while() -> None:
    from workers.engines.generation.constrained import MAX_BACKOFF, Pace

    pace = Pace()
    assert pace.draws_first
    budgets = []
    for _ in range(7):
        pace.drawn(allowed=False)
        budgets.append(pace.masked)
        while not pace.draws_first:
            pace.masked_step()
    assert budgets == [1, 2, 4, 8, 16, MAX_BACKOFF, MAX_BACKOFF]
    pace.drawn(allowed=True)
    assert pace.draws_first and pace.backoff == MAX_BACKOFF // 2  # an allowed draw halves the backoff
    for _ in range(5):
        pace.drawn(allowed=True)
    pace.drawn(allowed=False)
    assert pace.masked == 1  # mostly allowed draws: back to drawing first nearly always
