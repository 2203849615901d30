"""The generation engine: continuous batching, sampling, stop strings, streaming, failures.

Most tests drive a deterministic fake LM that echoes its prompt (fast); the last ones run the tiny
random-weight chat checkpoint to check padding, masks and positions against running jobs alone.
"""

from __future__ import annotations

import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from shared.catalog import ModelKind, ModelSpec
from shared.errors import Cancelled, DeadlineExceeded, InternalError, InvalidRequest, ServiceUnavailable
from shared.events import DeltaEvent
from shared.jobs import ChatMessage, GenerateJob, GenerateResult, SamplingParams
from workers.backends.fake_lm import FakeLM
from workers.engines.base import Ticket
from workers.engines.generation import GenerationEngine
from workers.engines.generation.text import Detokenizer

WAIT_S = 20.0


class ListSink:
    """An in-memory EventSink: keeps every publish call."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, DeltaEvent]]] = []
        self._lock = threading.Lock()

    def publish(self, messages: list[tuple[str, DeltaEvent]]) -> None:
        with self._lock:
            self.calls.append(list(messages))

    def events(self, job_id: str) -> list[DeltaEvent]:
        with self._lock:
            return [event for call in self.calls for _, event in call if event.job_id == job_id]

    def text(self, job_id: str, index: int = 0) -> str:
        return "".join(d.text for e in self.events(job_id) for d in e.deltas if d.index == index)


_ids = iter(range(1_000_000))


def make_job(
    *,
    prompt: str | list[str] | None = None,
    messages: list[ChatMessage] | None = None,
    n: int = 1,
    stream: bool = False,
    deadline_s: float = 60.0,
    **sampling: object,
) -> GenerateJob:
    sampling.setdefault("temperature", 0.0)
    return GenerateJob(
        job_id=f"job-{next(_ids)}",
        model="m",
        reply_to="reply",
        deadline=time.time() + deadline_s,
        stream=stream,
        messages=messages,
        prompts=[prompt] if isinstance(prompt, str) else prompt,
        n=n,
        sampling=SamplingParams.model_validate(sampling),
    )


def spec(max_batch_size: int = 4, **kw: object) -> ModelSpec:
    return ModelSpec(name="m", kind=ModelKind.CHAT, source="fake", max_batch_size=max_batch_size, **kw)


def outcome(ticket: Ticket) -> GenerateResult:
    assert ticket.wait(WAIT_S), "job did not finish"
    result = ticket.outcome()
    assert isinstance(result, GenerateResult)
    return result


def wait_for(condition, timeout: float = WAIT_S) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.002)


def submit(engine: GenerationEngine, job: GenerateJob) -> Ticket:
    return engine.submit(job, threading.Event())


@pytest.fixture
def sink() -> ListSink:
    return ListSink()


@pytest.fixture
def run_engine(sink: ListSink) -> Iterator:
    """Factory: a started engine over ``lm``; stopped after the test."""
    engines: list[GenerationEngine] = []

    def make(lm, **spec_kw: object) -> GenerationEngine:
        engine = GenerationEngine(lm, spec(**spec_kw), sink)
        engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.stop()


# -- fake LM: scheduling ----------------------------------------------------------------------------


def test_second_job_joins_running_batch_and_leaves_first(run_engine) -> None:
    lm = FakeLM(step_delay=0.004)
    engine = run_engine(lm)
    long = submit(engine, make_job(prompt="abcdefg", max_tokens=300))
    wait_for(lambda: engine.stats().steps >= 5)
    short = submit(engine, make_job(prompt="xyz", max_tokens=6))

    assert outcome(short).choices[0].text == "xyzxyz"
    assert not long.done, "the short job waited for the long one"
    assert engine.stats().max_running_seen == 2
    steps = [rows for kind, rows in lm.calls if kind == "step"]
    joined = steps.index(2)
    assert steps[joined:].count(2) == 5  # one token from prefill, five decode steps together
    wait_for(lambda: engine.stats().last_batch_size == 1)  # the short one left the batch

    result = outcome(long)
    assert result.choices[0].text == ("abcdefg" * 50)[:300]
    assert engine.stats().busy_ms >= 250 * 4  # ~300 decode steps of at least 4 ms each
    assert result.choices[0].finish_reason == "length"
    assert engine.stats().running == 0


def test_running_sequences_are_capped_and_n_choices_have_distinct_indexes(run_engine) -> None:
    lm = FakeLM(peak=2.0)
    engine = run_engine(lm, max_batch_size=1)  # at most 4 sequences run at once
    result = outcome(submit(engine, make_job(prompt="hello", n=6, max_tokens=20, temperature=1.0, seed=3)))

    assert [c.index for c in result.choices] == list(range(6))
    assert len({c.text for c in result.choices}) == 6  # seed + j: each choice samples its own text
    assert engine.stats().max_running_seen == 4
    assert result.usage.prompt_tokens == 5 and result.usage.completion_tokens == 6 * 20
    assert [rows for kind, rows in lm.calls if kind == "prefill"] == [1, 1]  # the prompt runs once per batch


def test_prompts_times_n_choices_keep_their_prompts_apart(run_engine) -> None:
    engine = run_engine(FakeLM())
    result = outcome(submit(engine, make_job(prompt=["abc", "Hello", "xy"], n=2, max_tokens=4)))

    texts = [(c.index, c.text) for c in result.choices]
    hello = "Hello" * 4
    assert texts == [(0, "abca"), (1, "abca"), (2, hello), (3, hello), (4, "xyxy"), (5, "xyxy")]
    # "Hello" is one token in the fake: prompt tokens are 3 + 1 + 2, each prompt counted once.
    assert result.usage.prompt_tokens == 6
    assert result.usage.completion_tokens == 6 * 4
    assert result.usage.total_tokens == 30


def test_unjoinable_cache_runs_new_jobs_only_on_an_empty_batch(run_engine) -> None:
    lm = FakeLM(step_delay=0.002, joinable=False)
    engine = run_engine(lm)
    first = submit(engine, make_job(prompt="abc", max_tokens=40))
    wait_for(lambda: engine.stats().steps >= 3)
    second = submit(engine, make_job(prompt="xyz", max_tokens=5))

    assert outcome(second).choices[0].text == "xyzxy"
    assert first.done  # it could not join, so it ran after the first
    assert outcome(first).choices[0].text == ("abc" * 14)[:40]
    assert engine.stats().max_running_seen == 1


def test_cache_budget_holds_a_job_back_until_it_fits_in_fifo_order(run_engine) -> None:
    lm = FakeLM(step_delay=0.004)
    # Reservations (prompt + max_tokens): 3 + 20 and 3 + 60 fit the 90-token budget together,
    # the third's 2 + 10 does not; the fourth's 1 + 2 would, but it may not overtake the third.
    engine = run_engine(lm, max_cache_tokens=90)
    first = submit(engine, make_job(prompt="abc", max_tokens=20))
    second = submit(engine, make_job(prompt="xyz", max_tokens=60))
    third = submit(engine, make_job(prompt="ab", max_tokens=10))
    fourth = submit(engine, make_job(prompt="q", max_tokens=2))
    wait_for(lambda: engine.stats().running == 2 and engine.stats().waiting == 2)
    stats = engine.stats()
    assert stats.cache_tokens_reserved == 23 + 63
    assert not first.done and not third.done and not fourth.done

    assert outcome(first).choices[0].text == ("abc" * 7)[:20]
    assert outcome(third).choices[0].text == "ababababab"
    assert outcome(fourth).choices[0].text == "qq"
    assert not second.done, "the third job waited for the second one"
    assert outcome(second).choices[0].text == ("xyz" * 20)[:60]
    assert engine.stats().max_running_seen == 3
    assert max(rows for kind, rows in lm.calls if kind == "step") == 3
    assert engine.stats().cache_tokens_reserved == 0


def test_sequence_over_the_cache_budget_runs_alone(run_engine) -> None:
    lm = FakeLM()
    engine = run_engine(lm, max_cache_tokens=10)
    # Each choice reserves 3 + 20 tokens on its own, more than the budget: one runs at a time.
    result = outcome(submit(engine, make_job(prompt="abc", n=2, max_tokens=20)))

    assert [c.text for c in result.choices] == [("abc" * 7)[:20]] * 2
    assert engine.stats().max_running_seen == 1
    assert [rows for kind, rows in lm.calls if kind == "prefill"] == [1, 1]


def test_seed_reproduces_sampling_and_no_seed_varies(run_engine) -> None:
    engine = run_engine(FakeLM(peak=1.0))
    texts = [
        outcome(submit(engine, make_job(prompt="abc", max_tokens=30, temperature=1.0, seed=11)))
        .choices[0]
        .text
        for _ in range(2)
    ]
    streamed = submit(engine, make_job(prompt="abc", max_tokens=30, temperature=1.0, seed=11, stream=True))
    unseeded = {
        outcome(submit(engine, make_job(prompt="abc", max_tokens=30, temperature=1.0))).choices[0].text
        for _ in range(3)
    }
    assert texts[0] == texts[1] == outcome(streamed).choices[0].text
    assert texts[0] != "abc" * 10
    assert len(unseeded) == 3


def test_top_p_near_zero_is_greedy(run_engine) -> None:
    engine = run_engine(FakeLM(peak=1.2))
    result = outcome(submit(engine, make_job(prompt="abcd", max_tokens=12, temperature=2.0, top_p=0.0)))
    assert result.choices[0].text == "abcdabcdabcd"


# -- one job cannot hold the model -------------------------------------------------------------------


def first_prefill_after(lm: FakeLM, mark: int) -> tuple[int, int]:
    """(decode steps before it, its index in ``lm.calls``) for the first prefill after ``lm.calls[mark]``."""
    calls = lm.calls[mark:]
    first = next(i for i, (kind, _) in enumerate(calls) if kind == "prefill")
    return sum(kind == "step" for kind, _ in calls[:first]), mark + first


def test_a_small_job_behind_two_huge_ones_starts_on_the_next_step(run_engine) -> None:
    def small_job() -> GenerateJob:
        return make_job(prompt="é🙂", max_tokens=4, temperature=1.0, seed=8)

    alone = outcome(submit(run_engine(FakeLM(peak=1.0)), small_job())).choices[0].text
    lm = FakeLM(peak=1.0, step_delay=0.002)
    engine = run_engine(lm)  # 4 slots, 16 rows: one kept free for each slot without a job
    cancel = threading.Event()
    # Two jobs at the cap (2 prompts x n=128), whose choices all outlast the test.
    hog = engine.submit(make_job(prompt=["abc", "Hello"], n=128, max_tokens=400), cancel)
    wait_for(lambda: engine.stats().running == 13)
    second = engine.submit(make_job(prompt=["xyz", "pq"], n=128, max_tokens=400), cancel)
    wait_for(lambda: engine.stats().running == 14)
    mark = len(lm.calls)
    small = submit(engine, small_job())

    result = outcome(small)
    steps_before, at = first_prefill_after(lm, mark)
    assert steps_before <= 2, f"the small job waited {steps_before} decode steps"
    assert lm.calls[at] == ("prefill", 1)
    assert [rows for _, rows in lm.calls[at + 1 : at + 4]] == [15, 15, 15]  # it decoded beside both
    assert not hog.done and not second.done
    assert engine.stats().waiting == 2 * 256 - 14
    assert result.choices[0].text == alone  # a seeded choice samples the same text beside the hogs
    cancel.set()
    for ticket in (hog, second):
        assert ticket.wait(WAIT_S)
        with pytest.raises(Cancelled):
            ticket.outcome()


def test_rows_go_to_the_job_that_runs_fewest_and_the_cache_budget_holds(run_engine) -> None:
    lm = FakeLM(step_delay=0.001)
    # One slot (4 rows, none kept back), and room in the cache for three of these choices.
    engine = run_engine(lm, max_batch_size=1, max_cache_tokens=3 * (3 + 20))
    big = submit(engine, make_job(prompt="abc", n=12, max_tokens=20))
    wait_for(lambda: engine.stats().running == 3)
    other = submit(engine, make_job(prompt="xyz", n=2, max_tokens=20))

    assert [c.text for c in outcome(other).choices] == [("xyz" * 7)[:20]] * 2
    assert not big.done, "the other job's choices waited for all of the big one's"
    assert [c.text for c in outcome(big).choices] == [("abc" * 7)[:20]] * 12
    assert max(rows for kind, rows in lm.calls if kind == "step") == 3
    assert engine.stats().cache_tokens_reserved == 0


def test_a_job_over_its_models_sequence_cap_is_refused(run_engine) -> None:
    engine = run_engine(FakeLM(), max_sequences_per_request=8)
    with pytest.raises(InvalidRequest) as too_many_n:
        submit(engine, make_job(prompt=["a", "b", "c"], n=3))
    with pytest.raises(InvalidRequest) as too_many_prompts:
        submit(engine, make_job(prompt=list("abcdefghi")))
    with pytest.raises(InvalidRequest) as chat:
        submit(engine, make_job(messages=[ChatMessage(role="user", content="hi")], n=9))

    assert (too_many_n.value.param, too_many_prompts.value.param, chat.value.param) == ("n", "prompt", "n")
    assert "3 prompts x n=3 = 9 sequences" in too_many_n.value.message
    assert "at most 8 sequences per request" in chat.value.message
    assert engine.active == 0
    at_cap = outcome(submit(engine, make_job(prompt=["ab", "cd"], n=4, max_tokens=2)))
    assert [c.text for c in at_cap.choices] == ["ab"] * 4 + ["cd"] * 4


def test_a_waiting_choice_costs_no_memory_until_it_starts(sink: ListSink) -> None:
    engine = GenerationEngine(FakeLM(), spec(), sink)  # not started: every choice waits
    job = make_job(
        prompt=["abc", "Hello"],
        n=128,
        max_tokens=16,
        temperature=1.0,
        seed=1,
        repetition_penalty=1.1,
        stop=["x"],
    )
    tracemalloc.start()
    try:
        ticket = submit(engine, job)
        allocated, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Per-choice samplers, detokenizers and stop matchers made at submit took 256 KiB here.
    assert allocated < 32 * 1024, f"submitting 256 choices allocated {allocated} bytes"
    assert engine.stats().waiting == 0  # not taken in yet
    engine.start()
    try:
        result = outcome(ticket)
    finally:
        engine.stop()
    assert [c.index for c in result.choices] == list(range(256))
    assert 256 <= result.usage.completion_tokens <= 256 * 16


class PoisonLM(FakeLM):
    """Fails any prefill with a prompt that contains :data:`POISON`, or with more than ``most`` prompts."""

    def __init__(self, most: int | None = None, **kw: object) -> None:
        super().__init__(**kw)
        self.most = most
        self.prefills: list[list[str]] = []

    def prefill(self, prompts):
        texts = [self.decode(ids) for ids in prompts]
        self.prefills.append(texts)
        if any(POISON in text for text in texts) or (self.most is not None and len(texts) > self.most):
            raise RuntimeError("this prompt breaks the model")
        return super().prefill(prompts)


POISON = "☠"


@pytest.mark.parametrize("joinable", [True, False])
def test_a_prefill_that_fails_fails_only_the_job_whose_prompt_broke_it(
    sink: ListSink, joinable: bool
) -> None:
    lm = PoisonLM(joinable=joinable)
    engine = GenerationEngine(lm, spec(), sink)
    jobs = [
        make_job(prompt="abc", max_tokens=5, stream=True),
        make_job(prompt=["ok", f"x{POISON}y"], max_tokens=5),
        make_job(prompt="Hello", n=2, max_tokens=6, temperature=1.0, seed=4),
        make_job(messages=[ChatMessage(role="user", content="xyz")], max_tokens=3),
    ]
    tickets = [submit(engine, job) for job in jobs]
    engine.start()  # all four jobs share the first prefill
    try:
        results = [outcome(tickets[i]) for i in (0, 2, 3)]
        assert tickets[1].wait(WAIT_S)
        with pytest.raises(InternalError):
            tickets[1].outcome()
    finally:
        engine.stop()

    assert lm.prefills[0] == ["abc", "ok", "Hello", "xyz", f"x{POISON}y"]  # a choice of each job in turn
    if joinable:  # then each job alone (an unjoinable cache retries the rest when its batch is empty)
        assert lm.prefills[1:] == [["abc"], ["ok", f"x{POISON}y"], ["Hello"], ["xyz"]]
    assert [c.text for c in results[0].choices] == ["abcab"]
    assert sink.text(jobs[0].job_id) == "abcab"
    seeded = GenerationEngine(FakeLM(), spec(), sink)  # the retried job samples what it would alone
    seeded.start()
    assert [c.text for c in results[1].choices] == [c.text for c in outcome(submit(seeded, jobs[2])).choices]
    seeded.stop()
    assert [c.text for c in results[2].choices] == ["xyz"]
    assert engine.stats().jobs_failed == 1 and engine.stats().jobs_done == 3


def test_a_prefill_that_fails_only_when_shared_fails_nobody(sink: ListSink) -> None:
    lm = PoisonLM(most=1)  # e.g. out of memory for a batch, fine for each prompt alone
    engine = GenerationEngine(lm, spec(), sink)
    tickets = [submit(engine, make_job(prompt=p, max_tokens=4)) for p in ("abc", "xyz", "pq")]
    engine.start()
    try:
        assert [outcome(t).choices[0].text for t in tickets] == ["abca", "xyzx", "pqpq"]
    finally:
        engine.stop()
    assert [len(p) for p in lm.prefills] == [3, 1, 1, 1]


# -- finishing ----------------------------------------------------------------------------------------


def test_max_tokens_eos_and_full_context(run_engine) -> None:
    engine = run_engine(FakeLM(context_length=10))
    capped = outcome(submit(engine, make_job(prompt="abc", max_tokens=4)))
    eos = outcome(submit(engine, make_job(prompt="xy<eos>", max_tokens=9)))
    full = outcome(submit(engine, make_job(prompt="abcdefg")))  # 7 tokens: 3 left

    assert (capped.choices[0].text, capped.choices[0].finish_reason) == ("abca", "length")
    assert capped.usage.completion_tokens == 4
    assert (eos.choices[0].text, eos.choices[0].finish_reason) == ("xy", "stop")
    assert eos.usage.completion_tokens == 3  # the eos token was generated too
    assert (full.choices[0].text, full.choices[0].finish_reason) == ("abc", "length")
    assert full.usage.total_tokens == 10


def test_sampling_out_of_its_ranges_is_refused_naming_the_parameter(run_engine) -> None:
    """SamplingParams validates its ranges as a job is decoded; one built without validation
    (model_construct, model_copy) is refused by the engine all the same, before it is queued."""
    engine = run_engine(FakeLM())
    cases = {
        "temperature": {"temperature": -1.0},
        "top_p": {"top_p": 1.5},
        "top_k": {"top_k": -1},
        "repetition_penalty": {"repetition_penalty": 0.0},
        "max_tokens": {"max_tokens": 0},
        "top_logprobs": {"logprobs": 21},  # the request parameter it comes from
        "stop": {"stop": ["x"] * 17},
    }
    for param, values in cases.items():
        job = make_job(prompt="ab")
        job = job.model_copy(update={"sampling": job.sampling.model_copy(update=values)})
        with pytest.raises(InvalidRequest) as refused:
            submit(engine, job)
        assert refused.value.param == param, values
        assert f"invalid value for {next(iter(values))!r}" in refused.value.message
    assert engine.active == 0
    assert outcome(submit(engine, make_job(prompt="ab", max_tokens=2))).choices[0].text == "ab"


def test_prompt_that_fills_the_context_is_refused(run_engine) -> None:
    engine = run_engine(FakeLM(context_length=10))
    with pytest.raises(InvalidRequest) as completion:
        submit(engine, make_job(prompt=["ok", "abcdefghij"]))
    with pytest.raises(InvalidRequest) as chat:
        submit(engine, make_job(messages=[ChatMessage(role="user", content="x" * 12)]))
    with pytest.raises(InvalidRequest) as empty:
        submit(engine, make_job(prompt=""))

    assert (completion.value.code, completion.value.param) == ("context_length_exceeded", "prompt")
    assert (chat.value.code, chat.value.param) == ("context_length_exceeded", "messages")
    assert "10 tokens" in completion.value.message
    assert empty.value.param == "prompt"
    assert engine.active == 0


def test_model_without_chat_template_refuses_messages(run_engine) -> None:
    engine = run_engine(FakeLM(chat_template=False))
    with pytest.raises(InvalidRequest) as exc:
        submit(engine, make_job(messages=[ChatMessage(role="user", content="hi")]))
    assert exc.value.param == "messages"
    assert outcome(submit(engine, make_job(prompt="hi", max_tokens=2))).choices[0].text == "hi"


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_across_tokens_is_cut_and_never_streamed(
    run_engine, sink: ListSink, stream: bool
) -> None:
    engine = run_engine(FakeLM())
    # "Hello" and " world" are single tokens: the stop string starts inside one and ends inside the next.
    job = make_job(prompt="Hello world", max_tokens=20, stop=["zzz", "lo wor"], stream=stream)
    result = outcome(submit(engine, job))

    assert (result.choices[0].text, result.choices[0].finish_reason) == ("Hel", "stop")
    assert result.usage.completion_tokens == 2
    if stream:
        assert sink.text(job.job_id) == "Hel"
    else:
        assert sink.events(job.job_id) == []


def test_earliest_stop_string_wins_and_a_partial_match_is_released(run_engine, sink: ListSink) -> None:
    engine = run_engine(FakeLM())
    first = make_job(prompt="abcdef", max_tokens=12, stop=["def", "cd"], stream=True)
    partial = make_job(prompt="Hello world!", max_tokens=5, stop=["worlds"], stream=True)
    assert outcome(submit(engine, first)).choices[0].text == "ab"
    result = outcome(submit(engine, partial))

    assert result.choices[0].text == "Hello world!Hello world"  # " world" held back, then let go
    assert result.choices[0].finish_reason == "length"
    assert sink.text(partial.job_id) == result.choices[0].text
    # The prefill's token goes out at once (time to first token); "world" waits for the "!" after it,
    # and the last " world" comes out when max_tokens ends the choice.
    deltas = [d.text for e in sink.events(partial.job_id) for d in e.deltas]
    assert deltas == ["Hello", " ", "world!", "Hello", " world"]


# -- streaming --------------------------------------------------------------------------------------


def test_stream_deltas_concatenate_to_the_result(run_engine, sink: ListSink) -> None:
    lm = FakeLM(peak=1.5, step_delay=0.001)
    engine = run_engine(lm)
    jobs = [
        make_job(prompt="Hello world", n=2, max_tokens=15, temperature=1.0, seed=5, stream=True),
        make_job(prompt="abc<eos>", max_tokens=15, stream=True),
        make_job(prompt="quiet", max_tokens=15),
    ]
    tickets = [submit(engine, job) for job in jobs]
    results = [outcome(t) for t in tickets]

    for job, result in zip(jobs[:2], results[:2], strict=True):
        events = sink.events(job.job_id)
        assert [e.seq for e in events] == list(range(len(events)))
        for choice in result.choices:
            deltas = [d for e in events for d in e.deltas if d.index == choice.index]
            assert "".join(d.text for d in deltas) == choice.text
            assert [d.finish_reason for d in deltas][-1] == choice.finish_reason
            assert all(d.finish_reason is None for d in deltas[:-1])
    assert results[1].choices[0].text == "abc"
    assert sink.events(jobs[2].job_id) == []
    for call in sink.calls:  # one publish per step, at most one event per job in it
        ids = [event.job_id for _, event in call]
        assert len(ids) == len(set(ids))
        assert all(channel == "reply" for channel, _ in call)


def test_multibyte_characters_are_never_split(run_engine, sink: ListSink) -> None:
    engine = run_engine(FakeLM())
    # é is one token, 🙂 is two (half a character each), 中 is three single bytes.
    job = make_job(prompt="é🙂中", max_tokens=12, stream=True)
    result = outcome(submit(engine, job))

    assert result.choices[0].text == "é🙂中é🙂中"
    deltas = [d.text for e in sink.events(job.job_id) for d in e.deltas]
    assert "".join(deltas) == result.choices[0].text
    assert not any("\ufffd" in text for text in deltas)
    assert "🙂" in deltas and "中" in deltas


def test_detokenizer_window_stays_short() -> None:
    lm = FakeLM()
    detok = Detokenizer(lm.decode, lm.encode("ab"))
    ids = lm.encode("Hello é🙂 world " * 300)
    text = "".join(detok.add(i) for i in ids) + detok.flush()
    assert text == "Hello é🙂 world " * 300
    assert len(detok._ids) <= 4


def test_thousands_of_tokens_stream_quickly(run_engine, sink: ListSink) -> None:
    engine = run_engine(FakeLM(context_length=5000))
    job = make_job(prompt="Hello é🙂 world", max_tokens=3000, stream=True)
    started = time.monotonic()
    result = outcome(submit(engine, job))
    assert time.monotonic() - started < 10
    assert result.usage.completion_tokens == 3000
    assert sink.text(job.job_id) == result.choices[0].text


# -- cancel, deadline, failures, stop --------------------------------------------------------------


def test_cancel_stops_a_long_job_quickly(run_engine) -> None:
    lm = FakeLM(context_length=100_000, step_delay=0.002)
    engine = run_engine(lm)
    cancel = threading.Event()
    ticket = engine.submit(make_job(prompt="abc", max_tokens=50_000, stream=True), cancel)
    wait_for(lambda: engine.stats().steps >= 3)
    cancel.set()
    assert ticket.wait(2.0)
    with pytest.raises(Cancelled):
        ticket.outcome()
    wait_for(lambda: engine.stats().running == 0)
    assert engine.stats().steps < 200
    assert engine.active == 0


def test_deadline_fails_running_and_waiting_jobs(run_engine) -> None:
    engine = run_engine(FakeLM(context_length=100_000, step_delay=0.002))
    running = submit(engine, make_job(prompt="abc", max_tokens=50_000, deadline_s=0.2))
    expired = submit(engine, make_job(prompt="abc", deadline_s=-1))
    for ticket in (running, expired):
        assert ticket.wait(3.0)
        with pytest.raises(DeadlineExceeded):
            ticket.outcome()


@pytest.mark.parametrize("where", ["prefill", "step"])
def test_model_failure_fails_its_jobs_and_the_engine_goes_on(run_engine, where: str) -> None:
    lm = FakeLM()
    engine = run_engine(lm)
    lm.fail_next = where
    failed = submit(engine, make_job(prompt="abc", max_tokens=5))
    assert failed.wait(WAIT_S)
    with pytest.raises(InternalError):
        failed.outcome()
    assert outcome(submit(engine, make_job(prompt="abc", max_tokens=5))).choices[0].text == "abcab"
    assert engine.alive and engine.active == 0


def test_failing_sink_fails_streaming_jobs_only(run_engine, sink: ListSink) -> None:
    def broken(messages) -> None:
        raise ConnectionError("redis is down")

    sink.publish = broken  # type: ignore[method-assign]
    engine = run_engine(FakeLM())
    streaming = submit(engine, make_job(prompt="abc", max_tokens=5, stream=True))
    plain = submit(engine, make_job(prompt="abc", max_tokens=5))
    assert streaming.wait(WAIT_S)
    with pytest.raises(InternalError):
        streaming.outcome()
    assert outcome(plain).choices[0].text == "abcab"


def test_stop_fails_pending_and_running_jobs(sink: ListSink) -> None:
    engine = GenerationEngine(FakeLM(context_length=100_000, step_delay=0.002), spec(max_batch_size=1), sink)
    engine.start()
    tickets = [submit(engine, make_job(prompt="abc", max_tokens=50_000, n=3)) for _ in range(3)]
    wait_for(lambda: engine.stats().steps >= 2)
    engine.stop()

    assert not engine.alive
    for ticket in tickets:
        assert ticket.done
        with pytest.raises(ServiceUnavailable):
            ticket.outcome()
    late = submit(engine, make_job(prompt="abc"))
    with pytest.raises(ServiceUnavailable):
        late.outcome()
    assert engine.active == 0


# -- the real tiny chat checkpoint --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_chat(default_models_dir: Path):
    from bootstrap.checkpoints import TINY_CHAT
    from workers.backends.causal_lm import CausalLM

    model_spec = ModelSpec(name="tiny", kind=ModelKind.CHAT, source=str(default_models_dir / TINY_CHAT))
    return CausalLM.load(model_spec)


PROMPTS = [
    "1 2 3 4",
    "The cat sat on the mat",
    "Hello there",
    "Alice went to Paris yesterday and",
    "def f(x):",
]


def run_alone(lm, sink: ListSink, job: GenerateJob) -> GenerateResult:
    engine = GenerationEngine(lm, spec(), sink)
    engine.start()
    try:
        return outcome(submit(engine, job))
    finally:
        engine.stop()


def test_tiny_chat_template_usage_and_hf_generate_agree(tiny_chat, sink: ListSink) -> None:
    messages = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi there")]
    result = run_alone(tiny_chat, sink, make_job(messages=messages, max_tokens=12))

    tokenizer = tiny_chat.tokenizer
    rendered = tokenizer.apply_chat_template(
        [m.model_dump(exclude_none=True) for m in messages], tokenize=False, add_generation_prompt=True
    )
    assert rendered.endswith("<|im_start|>assistant\n")
    prompt_ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert result.usage.prompt_tokens == len(prompt_ids)
    with torch.inference_mode():
        reference = tiny_chat.model.generate(
            torch.tensor([prompt_ids]), max_new_tokens=12, do_sample=False, pad_token_id=0
        )[0, len(prompt_ids) :]
    assert result.usage.completion_tokens == len(reference)
    assert result.choices[0].text == tokenizer.decode(reference, skip_special_tokens=True)
    assert result.choices[0].finish_reason == ("stop" if reference[-1] == 2 else "length")


def test_tiny_chat_same_seed_same_text_streamed_or_not(tiny_chat, sink: ListSink) -> None:
    def job(stream: bool, seed: int = 42) -> GenerateJob:
        return make_job(
            prompt="The cat", n=2, max_tokens=30, temperature=0.9, top_p=0.95, seed=seed, stream=stream
        )

    plain = run_alone(tiny_chat, sink, job(False))
    streamed_job = job(True)
    streamed = run_alone(tiny_chat, sink, streamed_job)
    other_seed = run_alone(tiny_chat, sink, job(False, seed=43))

    assert [c.text for c in plain.choices] == [c.text for c in streamed.choices]
    assert plain.choices[0].text != plain.choices[1].text
    assert [c.text for c in other_seed.choices] != [c.text for c in plain.choices]
    for choice in streamed.choices:
        assert sink.text(streamed_job.job_id, choice.index) == choice.text


def test_tiny_chat_batched_greedy_equals_alone(tiny_chat, sink: ListSink) -> None:
    def jobs() -> list[GenerateJob]:
        return [make_job(prompt=p, max_tokens=12 + 6 * i) for i, p in enumerate(PROMPTS)]

    alone = [run_alone(tiny_chat, sink, job).choices[0].text for job in jobs()]

    # All at once: one left-padded prefill.
    engine = GenerationEngine(tiny_chat, spec(), sink)
    tickets = [submit(engine, job) for job in jobs()]
    engine.start()
    together = [outcome(t).choices[0].text for t in tickets]
    assert engine.stats().max_running_seen == len(PROMPTS)
    engine.stop()

    # Staggered: each joins a running batch of a different width, others leave.
    engine = GenerationEngine(tiny_chat, spec(), sink)
    engine.start()
    tickets = []
    for job in jobs():
        tickets.append(submit(engine, job))
        wait_for(lambda: engine.stats().steps >= 3 * len(tickets))
    staggered = [outcome(t).choices[0].text for t in tickets]
    assert engine.stats().max_running_seen > 1
    engine.stop()

    assert len(set(alone)) == len(PROMPTS)
    assert together == alone
    assert staggered == alone


def test_tiny_chat_limits(default_models_dir: Path, sink: ListSink) -> None:
    from bootstrap.checkpoints import TINY_CHAT
    from workers.backends.causal_lm import CausalLM

    source = str(default_models_dir / TINY_CHAT)
    lm = CausalLM.load(ModelSpec(name="t", kind=ModelKind.CHAT, source=source, context_length=16))
    assert lm.context_length == 16 and lm.eos_token_ids == frozenset({2})
    engine = GenerationEngine(lm, spec(), sink)
    with pytest.raises(InvalidRequest) as exc:
        engine.submit(
            make_job(messages=[ChatMessage(role="user", content="tell me a long story " * 4)]),
            threading.Event(),
        )
    assert exc.value.code == "context_length_exceeded"

    engine.start()
    result = outcome(submit(engine, make_job(prompt="Hello there")))
    engine.stop()
    assert result.choices[0].finish_reason in ("length", "stop")
    assert result.usage.total_tokens <= 16

    lm.tokenizer.chat_template = None
    with pytest.raises(InvalidRequest) as exc:
        engine.submit(make_job(messages=[ChatMessage(role="user", content="hi")]), threading.Event())
    assert exc.value.param == "messages"


def test_sliding_window_cache_batches_without_joining(tiny_chat, sink: ListSink) -> None:
    from transformers import MistralConfig, MistralForCausalLM

    from workers.backends.causal_lm import CausalLM

    config = MistralConfig(
        vocab_size=len(tiny_chat.tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        sliding_window=6,  # shorter than the prompts
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = MistralForCausalLM(config).eval()
    lm = CausalLM(model, tiny_chat.tokenizer, context_length=256)

    def jobs() -> list[GenerateJob]:
        return [make_job(prompt=p, max_tokens=10 + 5 * i) for i, p in enumerate(PROMPTS[:3])]

    alone = [run_alone(lm, sink, job).choices[0].text for job in jobs()]
    engine = GenerationEngine(lm, spec(), sink)
    tickets = [submit(engine, job) for job in jobs()]
    engine.start()
    wait_for(lambda: engine.stats().steps >= 2)
    late = submit(engine, make_job(prompt=PROMPTS[3], max_tokens=5))
    together = [outcome(t).choices[0].text for t in tickets]
    assert outcome(late).choices[0].finish_reason == "length"
    engine.stop()

    assert together == alone
    assert engine.stats().max_running_seen == 3  # one padded prefill; the late job ran on its own


def test_kv_batch_pads_joins_and_trims(tiny_chat) -> None:
    long, short, other = (tiny_chat.completion_prompt(p) for p in (PROMPTS[3], PROMPTS[2], PROMPTS[0]))

    def alone(prompt: list[int], token: int) -> torch.Tensor:
        _, batch = tiny_chat.prefill([prompt])
        return batch.step([[token]])[0]

    _, batch = tiny_chat.prefill([long, short])
    assert tuple(batch.mask.shape) == (2, len(long))
    batch.keep([1])  # the long prompt leaves: its width is padding for everyone left
    assert tuple(batch.mask.shape) == (1, len(short)) and bool(batch.mask.all())
    _, newcomer = tiny_chat.prefill([other])
    batch.join(newcomer)
    width = max(len(short), len(other))
    assert tuple(batch.mask.shape) == (2, width)
    assert all(layer.keys.shape[2] == width for layer in batch.cache.layers)
    assert batch.positions.tolist() == [len(short), len(other)]

    logits = batch.step([[7], [9]])
    torch.testing.assert_close(logits[0], alone(short, 7), rtol=0, atol=1e-5)
    torch.testing.assert_close(logits[1], alone(other, 9), rtol=0, atol=1e-5)
    batch.keep([1, 1])  # a repeated row is an independent copy
    logits = batch.step([[3], [4]])
    assert not torch.equal(logits[0], logits[1])


def test_kv_batch_feeds_rows_runs_of_tokens(tiny_chat) -> None:
    # A grammar's forced run is fed in one step: each row's logits are what feeding its tokens one
    # by one alone gives, however many tokens its neighbours got, also once the holes that the
    # shorter rows get are compacted into left padding.
    prompts = [tiny_chat.completion_prompt(p) for p in (PROMPTS[0], PROMPTS[2])]
    run = list(range(30, 36))
    feeds = [[[5, 6, 7], [8]], [run, [9]], [[10], run], [run, [11]], [[12], [13]]]

    def alone(row: int) -> list[torch.Tensor]:
        _, batch = tiny_chat.prefill([prompts[row]])
        out = []
        for fed in feeds:
            for token in fed[row]:
                logits = batch.step([[token]])[0]
            out.append(logits)
        return out

    expected = [alone(0), alone(1)]
    _, batch = tiny_chat.prefill(prompts)
    assert batch.multi_token
    for k, fed in enumerate(feeds):
        logits = batch.step(fed)
        for row in (0, 1):
            torch.testing.assert_close(logits[row], expected[row][k], rtol=0, atol=1e-5)
        # Holes (masked columns after a row's first token) stay under a quarter of the cache:
        # without compaction the second step would leave more.
        holes = int((batch.mask.cummax(dim=1).values.bool() & (batch.mask == 0)).sum())
        assert 4 * holes <= batch.mask.numel()
        assert all(layer.keys.shape[2] == batch.mask.shape[1] for layer in batch.cache.layers)
    assert batch.positions.tolist() == [len(prompts[0]) + 17, len(prompts[1]) + 10]
