"""Sampling parameters: the logits processors, logprobs, echo and token prompts.

The processors are checked on tensors first, then through the generation engine over the fake LM
(whose logits a test can recompute), then against Hugging Face ``generate`` on the tiny checkpoint.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from shared.catalog import ModelKind, ModelSpec
from shared.errors import InvalidRequest
from shared.events import DeltaEvent
from shared.jobs import GenerateJob, GenerateResult, SamplingParams
from workers.backends.fake_lm import EOS_ID, FakeLM
from workers.engines import sampling
from workers.engines.generation import GenerationEngine
from workers.engines.sampling import SequenceSampler

WAIT_S = 20.0


def row(prompt: tuple[int, ...] = (), seed: int | None = None, **params: object) -> SequenceSampler:
    return SequenceSampler(SamplingParams.model_validate(params), list(prompt), seed)


# -- the processors, on tensors ----------------------------------------------------------------------


def test_logit_bias_adds_to_its_tokens_only() -> None:
    logits = torch.randn(3, 50)
    before = logits.clone()
    rows = [row(logit_bias={3: 5.0, 7: -100.0}), row(), row(logit_bias={3: -1.5})]
    out = sampling.process(logits, rows)

    expected = before.clone()
    expected[0, 3] += 5.0
    expected[0, 7] -= 100.0
    expected[2, 3] -= 1.5
    assert torch.equal(out, expected)
    assert torch.equal(logits, before), "the model's logits are not modified in place"


def test_repetition_penalty_matches_transformers_over_prompt_and_output() -> None:
    from transformers import RepetitionPenaltyLogitsProcessor

    prompt, generated = [1, 2, 3], [3, 4, 4, 9]
    penalised = row(tuple(prompt), repetition_penalty=1.3)
    for token in generated[:2]:
        penalised.record(token)  # before the first step: kept until the counts exist
    logits = torch.randn(2, 20) * 3
    sampling.process(logits, [penalised, row()])
    for token in generated[2:]:
        penalised.record(token)

    out = sampling.process(logits, [penalised, row()])
    expected = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([prompt + generated]), logits[:1].clone())
    torch.testing.assert_close(out[:1], expected, rtol=0, atol=0)
    assert torch.equal(out[1], logits[1])


def test_frequency_and_presence_penalties_follow_openai_over_output_only() -> None:
    penalised = row((5, 6), frequency_penalty=0.5, presence_penalty=1.25)
    negative = row((), frequency_penalty=-2.0)
    for token in (1, 1, 1, 2):
        penalised.record(token)
        negative.record(token)
    logits = torch.randn(2, 10)
    out = sampling.process(logits, [penalised, negative])

    expected = logits.clone()
    expected[0, 1] -= 3 * 0.5 + 1.25
    expected[0, 2] -= 1 * 0.5 + 1.25  # prompt tokens 5 and 6 are not penalised
    expected[1, 1] += 3 * 2.0
    expected[1, 2] += 2.0
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_truncation_masks_min_p_top_k_and_top_p_per_row() -> None:
    logits = torch.log(torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])).repeat(5, 1)
    params = [
        SamplingParams(top_k=2),
        SamplingParams(min_p=0.3),  # keeps p >= 0.12
        SamplingParams(top_p=0.7),  # 0.4 + 0.25 < 0.7: the third token is needed
        SamplingParams(top_k=4, top_p=0.6),  # renormalised over 4 tokens: 0.44, 0.28 -> two
        SamplingParams(),
    ]
    drop = sampling._truncation(logits, params, logits.shape[-1])
    assert drop is not None
    kept = [[i for i, gone in enumerate(r) if not gone] for r in drop.tolist()]
    assert kept == [[0, 1], [0, 1, 2], [0, 1, 2], [0, 1], [0, 1, 2, 3, 4, 5]]


def test_top_p_nucleus_wider_than_the_searched_head_sorts_the_vocabulary() -> None:
    vocab = sampling.NUCLEUS_HEAD * 3
    # Nearly flat and in descending order: the nucleus of 0.9 is most of the vocabulary.
    flat = (-torch.arange(vocab, dtype=torch.float32) * 1e-4).repeat(2, 1)
    drop = sampling._truncation(flat, [SamplingParams(top_p=0.9), SamplingParams()], vocab)
    assert drop is not None
    probs = torch.softmax(flat[0], dim=-1)
    needed = int((probs.cumsum(dim=-1) - probs < 0.9).sum())  # tokens before the mass reaches 0.9
    assert (~drop).sum(dim=-1).tolist() == [needed, vocab]
    assert needed > sampling.NUCLEUS_HEAD * 2


@pytest.mark.parametrize(
    "params, allowed",
    [({"top_k": 3}, {0, 1, 2}), ({"min_p": 0.6}, {0, 1, 2}), ({"top_p": 0.5}, {0, 1})],
)
def test_sampling_draws_only_kept_tokens(params: dict, allowed: set[int]) -> None:
    logits = torch.log(torch.tensor([[0.3, 0.25, 0.2, 0.15, 0.1]]))
    sampler = row(seed=1, temperature=1.0, **params)
    drawn = {sampling.sample(logits, [sampler])[0] for _ in range(300)}
    assert drawn == allowed


def test_logprobs_are_the_log_softmax_of_the_processed_logits() -> None:
    logits = torch.randn(3, 40) * 2
    rows = [
        row(
            (1, 2), seed=3, temperature=0.7, top_k=2, logit_bias={5: 4.0}, repetition_penalty=1.5, logprobs=5
        ),
        row(temperature=0.0, logprobs=0),
        row(temperature=1.0),  # asks for none
    ]
    rows[0].record(7)
    processed = sampling.process(logits, rows)
    tokens = sampling.sample(processed, rows)
    out = sampling.logprobs(processed, rows, tokens)

    biased = logits[0].clone()
    biased[5] += 4.0
    for token in (1, 2, 7):  # prompt and output tokens, divided or multiplied by the penalty
        biased[token] = biased[token] / 1.5 if biased[token] > 0 else biased[token] * 1.5
    expected = torch.log_softmax(biased, dim=-1)  # no temperature, no top-k cut
    first = out[0]
    assert first is not None and len(first.top) == 5
    assert first.logprob == pytest.approx(float(expected[tokens[0]]), abs=1e-5)
    top = expected.topk(5)
    assert [i for i, _ in first.top] == top.indices.tolist()
    assert [v for _, v in first.top] == pytest.approx(top.values.tolist(), abs=1e-5)
    second = out[1]
    assert second is not None and second.top == []
    assert tokens[1] == int(logits[1].argmax())
    assert second.logprob == pytest.approx(float(torch.log_softmax(logits[1], -1).max()), abs=1e-5)
    assert out[2] is None


def test_extreme_values_stay_finite() -> None:
    logits = torch.randn(2, 30) * 5
    tiny_temperature = row(temperature=1e-300, seed=1)
    tiny_penalty = row((1, 2, 3), temperature=1.0, repetition_penalty=1e-30, logprobs=2, seed=1)
    tiny_penalty.record(4)
    processed = sampling.process(logits, [tiny_temperature, tiny_penalty])
    tokens = sampling.sample(processed, [tiny_temperature, tiny_penalty])
    out = sampling.logprobs(processed, [tiny_temperature, tiny_penalty], tokens)
    assert tokens[0] == int(logits[0].argmax())
    assert torch.isfinite(processed).all()
    assert out[1] is not None and all(v == v for v in (out[1].logprob, *(v for _, v in out[1].top)))


def test_a_seeded_row_draws_the_same_alone_or_next_to_any_rows() -> None:
    steps = [torch.randn(6, 500) * 2 for _ in range(40)]
    target = {"temperature": 0.9, "top_p": 0.95, "seed": 7}

    def run(batched: bool) -> list[int]:
        mine = row((1, 2, 3), **target)
        others = [
            row((4,), temperature=1.0, top_k=5),
            row((4,), temperature=1.3, min_p=0.2, repetition_penalty=1.4, frequency_penalty=1.0),
            row((4,), temperature=0.0, logit_bias={3: 10.0}),
            row((4,), temperature=0.5, top_p=0.3, logprobs=3),
            row((4,), temperature=1.0),
        ]
        rows = [others[0], others[1], mine, *others[2:]] if batched else [mine]
        picked = []
        for logits in steps:
            logits = logits if batched else logits[2:3]  # the same logits for the seeded row
            processed = sampling.process(logits, rows)
            tokens = sampling.sample(processed, rows)
            sampling.logprobs(processed, rows, tokens)
            sampling.record(rows, tokens)
            picked.append(tokens[rows.index(mine)])
        return picked

    alone = run(batched=False)
    assert run(batched=True) == alone
    assert len(set(alone)) > 5


def test_a_batch_of_32_with_every_processor_stays_vectorised() -> None:
    vocab = 100_000
    params = {
        "temperature": 0.8,
        "top_k": 40,
        "top_p": 0.9,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.5,
        "logit_bias": {i: 1.0 for i in range(300)},
        "logprobs": 20,
    }
    rows = [row(tuple(range(i, i + 200)), seed=i, **params) for i in range(32)]
    logits = torch.randn(32, vocab) * 4
    started = time.monotonic()
    for _ in range(5):
        processed = sampling.process(logits, rows)
        tokens = sampling.sample(processed, rows)
        sampling.logprobs(processed, rows, tokens)
        sampling.record(rows, tokens)
    # Python loops over the vocabulary would take seconds per step; tensor ops take tens of ms.
    assert (time.monotonic() - started) / 5 < 2.0


# -- through the engine, over the fake LM ------------------------------------------------------------


class ListSink:
    def __init__(self) -> None:
        self.events: list[DeltaEvent] = []
        self._lock = threading.Lock()

    def publish(self, messages: list[tuple[str, DeltaEvent]]) -> None:
        with self._lock:
            self.events.extend(event for _, event in messages)

    def of(self, job_id: str) -> list[DeltaEvent]:
        with self._lock:
            return [e for e in self.events if e.job_id == job_id]


_ids = iter(range(1_000_000))


def make_job(
    prompt: str | list, *, n: int = 1, stream: bool = False, echo: bool = False, **params
) -> GenerateJob:
    params.setdefault("temperature", 0.0)
    prompts = [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) else prompt
    return GenerateJob(
        job_id=f"s-{next(_ids)}",
        model="m",
        reply_to="reply",
        deadline=time.time() + 60,
        stream=stream,
        prompts=prompts,
        n=n,
        echo=echo,
        sampling=SamplingParams.model_validate(params),
    )


@pytest.fixture
def sink() -> ListSink:
    return ListSink()


@pytest.fixture
def engine_for(sink: ListSink) -> Iterator:
    engines: list[GenerationEngine] = []

    def make(lm) -> GenerationEngine:
        engine = GenerationEngine(lm, ModelSpec(name="m", kind=ModelKind.CHAT, source="x"), sink)
        engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.stop()


def run(engine: GenerationEngine, job: GenerateJob) -> GenerateResult:
    ticket = engine.submit(job, threading.Event())
    assert ticket.wait(WAIT_S), "job did not finish"
    result = ticket.outcome()
    assert isinstance(result, GenerateResult)
    return result


def test_stop_token_ids_end_the_choice_with_their_text(engine_for, sink: ListSink) -> None:
    lm = FakeLM()
    engine = engine_for(lm)
    (c,) = lm.encode("c")
    job = make_job("abcdef", max_tokens=10, stop_token_ids=[c, 999], stream=True)
    result = run(engine, job)
    assert (result.choices[0].text, result.choices[0].finish_reason) == ("abc", "stop")
    assert result.usage.completion_tokens == 3
    assert "".join(d.text for e in sink.of(job.job_id) for d in e.deltas) == "abc"


def test_ignore_eos_generates_past_the_eos_token(engine_for) -> None:
    engine = engine_for(FakeLM())
    stopped = run(engine, make_job("ab<eos>", max_tokens=7))
    ignored = run(engine, make_job("ab<eos>", max_tokens=7, ignore_eos=True))
    assert (stopped.choices[0].text, stopped.choices[0].finish_reason) == ("ab", "stop")
    assert (ignored.choices[0].text, ignored.choices[0].finish_reason) == ("ababa", "length")
    assert ignored.usage.completion_tokens == 7  # the eos tokens count, their text is empty


def test_logit_bias_bans_and_forces_tokens(engine_for) -> None:
    lm = FakeLM()
    engine = engine_for(lm)
    (b,), (z,) = lm.encode("b"), lm.encode("z")
    banned = run(engine, make_job("abcd", max_tokens=8, logit_bias={b: -100})).choices[0].text
    forced = run(engine, make_job("abcd", max_tokens=4, logit_bias={z: 100})).choices[0].text
    assert "b" not in banned and banned.startswith("a") and "cda" in banned
    assert forced == "zzzz"


def test_presence_and_frequency_penalties_steer_greedy_decoding(engine_for) -> None:
    engine = engine_for(FakeLM(peak=1.5))  # the echoed token leads the noise by 0.5 to 1.5
    plain = run(engine, make_job("aaaa", max_tokens=4)).choices[0].text
    present = run(engine, make_job("aaaa", max_tokens=4, presence_penalty=2.0)).choices[0].text
    frequent = run(engine, make_job("aaaa", max_tokens=4, frequency_penalty=-2.0)).choices[0].text
    assert plain == "aaaa"
    assert present[0] == "a" and "a" not in present[1:]  # once generated, "a" is 2 behind
    assert frequent == "aaaa"


def test_top_k_of_one_is_greedy_at_any_temperature(engine_for) -> None:
    engine = engine_for(FakeLM(peak=0.5))
    greedy = run(engine, make_job("abcdef", max_tokens=12)).choices[0].text
    top1 = run(engine, make_job("abcdef", max_tokens=12, temperature=2.0, top_k=1, seed=None))
    hot = run(engine, make_job("abcdef", max_tokens=12, temperature=2.0, seed=1)).choices[0].text
    assert top1.choices[0].text == greedy and hot != greedy


def test_engine_logprobs_equal_the_log_softmax_of_the_processed_logits(engine_for) -> None:
    lm = FakeLM(peak=2.0)
    engine = engine_for(lm)
    (x,) = lm.encode("x")
    job = make_job("abc", max_tokens=3, logprobs=4, logit_bias={x: 1.5}, temperature=0.8, seed=2)
    result = run(engine, job)
    entries = result.choices[0].logprobs
    assert entries is not None and len(entries) == 3

    # Replay the fake's logits for the tokens the job got.
    ids = lm.encode("abc")
    logits, batch = lm.prefill([ids])
    rows = [logits[0]]
    for entry in entries[:-1]:
        rows.append(batch.step([[entry.id]])[0])
    for entry, raw in zip(entries, rows, strict=True):
        biased = raw.clone()
        biased[x] += 1.5
        expected = torch.log_softmax(biased, dim=-1)
        assert entry.logprob == pytest.approx(float(expected[entry.id]), abs=1e-5)
        top = expected.topk(4)
        assert [t.id for t in entry.top] == top.indices.tolist()
        assert [t.logprob for t in entry.top] == pytest.approx(top.values.tolist(), abs=1e-5)
        assert entry.token == lm.decode([entry.id]) and bytes(entry.bytes) == lm.token_bytes([entry.id])[0]
    assert "".join(e.token for e in entries) == result.choices[0].text


def test_streamed_deltas_carry_their_tokens_logprobs(engine_for, sink: ListSink) -> None:
    engine = engine_for(FakeLM())
    # 🙂 is two tokens: the first one's delta has its logprob but no text yet.
    job = make_job("a🙂b", n=2, max_tokens=6, logprobs=1, temperature=1.0, seed=4, stream=True)
    result = run(engine, job)
    for choice in result.choices:
        deltas = [d for e in sink.of(job.job_id) for d in e.deltas if d.index == choice.index]
        streamed = [entry for d in deltas for entry in d.logprobs or []]
        assert choice.logprobs is not None and streamed == choice.logprobs
        assert len(streamed) == result.usage.completion_tokens // 2
        assert any(d.logprobs and not d.text for d in deltas)
        assert "".join(d.text for d in deltas) == choice.text


def test_echo_prepends_the_prompt_and_its_logprobs(engine_for, sink: ListSink) -> None:
    lm = FakeLM()
    engine = engine_for(lm)
    job = make_job(["Hello world", "xy"], max_tokens=3, echo=True, logprobs=2, stream=True)
    result = run(engine, job)

    first, second = result.choices
    assert first.text == "Hello world" + "Hello worldHello"  # "Hello" and " world" are one token each
    assert second.text == "xyxyx"
    entries = first.logprobs
    assert entries is not None
    prompt_ids = lm.encode("Hello world")
    assert [e.id for e in entries[: len(prompt_ids)]] == prompt_ids
    assert entries[0].logprob is None and entries[0].top == []
    expected = torch.log_softmax(lm.prompt_logits(prompt_ids)[0], dim=-1)
    assert entries[1].logprob == pytest.approx(float(expected[prompt_ids[1]]), abs=1e-5)
    assert len(entries) == len(prompt_ids) + 3
    opening = [d for e in sink.of(job.job_id) for d in e.deltas if d.index == 0][0]
    assert opening.text.startswith("Hello world")

    plain = run(engine, make_job("xy", max_tokens=3, echo=True))
    assert plain.choices[0].text == "xyxyx" and plain.choices[0].logprobs is None


def test_token_id_prompts_equal_text_prompts_and_echo_as_text(engine_for) -> None:
    lm = FakeLM()
    engine = engine_for(lm)
    ids = lm.encode("Hello é")
    by_ids = run(engine, make_job([ids, lm.encode("ab")], max_tokens=5, echo=True))
    by_text = run(engine, make_job(["Hello é", "ab"], max_tokens=5, echo=True))
    assert [c.text for c in by_ids.choices] == [c.text for c in by_text.choices]
    assert by_ids.usage == by_text.usage


def test_out_of_vocabulary_ids_are_refused(engine_for) -> None:
    lm = FakeLM()
    engine = engine_for(lm)
    with pytest.raises(InvalidRequest) as bias:
        engine.submit(make_job("ab", logit_bias={lm.vocab_size: 1.0}), threading.Event())
    with pytest.raises(InvalidRequest) as prompt:
        engine.submit(make_job([1, lm.vocab_size + 5]), threading.Event())
    assert (bias.value.param, prompt.value.param) == ("logit_bias", "prompt")
    assert engine.active == 0


def test_same_seed_same_text_alone_or_among_other_jobs(engine_for) -> None:
    lm = FakeLM(peak=1.0, step_delay=0.001)
    engine = engine_for(lm)
    seeded = {"max_tokens": 30, "temperature": 0.9, "top_p": 0.95, "top_k": 50, "seed": 21}
    alone = run(engine, make_job("abcdef", n=2, **seeded))

    noise = [
        make_job("Hello world", max_tokens=40, temperature=1.2, min_p=0.1),
        make_job("xyz", max_tokens=25, temperature=0.7, repetition_penalty=1.3, presence_penalty=1.0),
        make_job("STOP", max_tokens=35, temperature=0.0, logprobs=5, logit_bias={EOS_ID: -5}),
    ]
    tickets = [engine.submit(job, threading.Event()) for job in noise[:2]]
    target = engine.submit(make_job("abcdef", n=2, **seeded), threading.Event())
    tickets.append(engine.submit(noise[2], threading.Event()))
    assert target.wait(WAIT_S) and all(t.wait(WAIT_S) for t in tickets)
    together = target.outcome()
    assert isinstance(together, GenerateResult)
    assert engine.stats().max_running_seen >= 4
    assert [c.text for c in together.choices] == [c.text for c in alone.choices]
    assert alone.choices[0].text != alone.choices[1].text


# -- the tiny checkpoint against Hugging Face ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_chat(default_models_dir: Path):
    from bootstrap.checkpoints import TINY_CHAT
    from workers.backends.causal_lm import CausalLM

    spec = ModelSpec(name="tiny", kind=ModelKind.CHAT, source=str(default_models_dir / TINY_CHAT))
    return CausalLM.load(spec)


def test_tiny_repetition_penalty_matches_hf_generate(tiny_chat, engine_for) -> None:
    engine = engine_for(tiny_chat)
    prompt = "The cat sat on the mat and the cat"
    result = run(engine, make_job(prompt, max_tokens=20, repetition_penalty=1.3))
    ids = tiny_chat.completion_prompt(prompt)
    with torch.inference_mode():
        reference = tiny_chat.model.generate(
            torch.tensor([ids]), max_new_tokens=20, do_sample=False, repetition_penalty=1.3, pad_token_id=0
        )[0, len(ids) :]
    plain = run(engine, make_job(prompt, max_tokens=20)).choices[0].text
    assert result.choices[0].text == tiny_chat.tokenizer.decode(reference, skip_special_tokens=True)
    assert result.choices[0].text != plain


def test_tiny_logprobs_match_hf_scores_and_bytes_rebuild_the_text(tiny_chat, engine_for) -> None:
    engine = engine_for(tiny_chat)
    prompt = "Hello there é🙂, how"
    result = run(engine, make_job(prompt, max_tokens=12, logprobs=3, ignore_eos=True))
    ids = tiny_chat.completion_prompt(prompt)
    with torch.inference_mode():
        out = tiny_chat.model.generate(
            torch.tensor([ids]),
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
            output_logits=True,
            return_dict_in_generate=True,
        )
    entries = result.choices[0].logprobs
    assert entries is not None and len(entries) == len(out.logits) == 12
    for entry, logits in zip(entries, out.logits, strict=True):
        expected = torch.log_softmax(logits[0, : tiny_chat.vocab_size].float(), dim=-1)
        assert entry.id == int(expected.argmax())
        assert entry.logprob == pytest.approx(float(expected.max()), abs=1e-4)
        assert [t.id for t in entry.top] == expected.topk(3).indices.tolist()
    assert bytes(b for e in entries for b in e.bytes).decode() == result.choices[0].text


def test_tiny_echo_logprobs_score_the_prompt(tiny_chat, engine_for) -> None:
    engine = engine_for(tiny_chat)
    prompt = "The quick brown fox"
    result = run(engine, make_job(prompt, max_tokens=1, echo=True, logprobs=0))
    ids = tiny_chat.completion_prompt(prompt)
    with torch.inference_mode():
        logits = tiny_chat.model(torch.tensor([ids])).logits[0, :-1, : tiny_chat.vocab_size]
    expected = torch.log_softmax(logits.float(), dim=-1).gather(1, torch.tensor(ids[1:]).unsqueeze(1))
    entries = result.choices[0].logprobs
    assert entries is not None and [e.id for e in entries[: len(ids)]] == ids
    assert entries[0].logprob is None
    assert [e.logprob for e in entries[1 : len(ids)]] == pytest.approx(expected.squeeze(1).tolist(), abs=1e-4)
    assert result.choices[0].text.startswith(prompt)
