"""Every generation parameter, token-id inputs, ``dimensions`` and TEI rerank, through the openai SDK."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest
import requests

MESSAGES = [{"role": "user", "content": "Tell me about queues."}]
CONTEXT = 256  # tiny-chat's context length in the test models file
#: tiny-chat's special tokens banned: every choice runs to max_tokens and its text is all its tokens.
NO_SPECIALS = {"0": -100, "1": -100, "2": -100}


@pytest.fixture(scope="module")
def chat_tokenizer(models_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(models_dir / "tiny-chat")


@pytest.fixture(scope="module")
def minilm_tokenizer(models_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(models_dir / "all-MiniLM-L6-v2")


def token_id(tokenizer, entry) -> int:
    """The id of a chat logprobs entry's token, from its bytes (tiny-chat is byte-level BPE)."""
    from workers.backends.causal_lm import _byte_level_alphabet

    chars = {b: c for c, b in _byte_level_alphabet().items()}
    return tokenizer.convert_tokens_to_ids("".join(chars[b] for b in entry.bytes))


def chat(sdk, **kwargs):
    kwargs.setdefault("model", "tiny-chat")
    kwargs.setdefault("messages", MESSAGES)
    return sdk.chat.completions.create(**kwargs)


def stream_chunks(sdk, **kwargs):
    return [c for c in chat(sdk, stream=True, **kwargs) if c.choices]


# -- chat ------------------------------------------------------------------------------------------


def test_chat_logprobs_and_top_logprobs(sdk):
    r = chat(sdk, max_tokens=10, seed=3, logprobs=True, top_logprobs=3, logit_bias=NO_SPECIALS)
    choice = r.choices[0]
    content = choice.logprobs.content
    assert len(content) == r.usage.completion_tokens == 10
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        tops = [t.logprob for t in entry.top_logprobs]
        assert tops == sorted(tops, reverse=True) and entry.logprob <= tops[0] + 1e-6
        assert all(t.bytes == list(t.token.encode()) or "\ufffd" in t.token for t in entry.top_logprobs)
    assert bytes(b for e in content for b in e.bytes).decode() == choice.message.content

    greedy = chat(sdk, max_tokens=6, temperature=0, logprobs=True)
    for entry in greedy.choices[0].logprobs.content:
        assert entry.top_logprobs == []
    assert chat(sdk, max_tokens=4).choices[0].logprobs is None


def test_streamed_chunks_carry_their_tokens_logprobs(sdk):
    kwargs = dict(max_tokens=12, seed=11, logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
    whole = chat(sdk, **kwargs).choices[0].logprobs.content
    chunks = stream_chunks(sdk, **kwargs)
    streamed = [e for c in chunks if c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in whole]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in whole], abs=1e-6)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].logprobs is None


def test_streamed_n_choices_have_their_index_and_role_chunk(sdk):
    kwargs = dict(max_tokens=10, n=3, seed=5, temperature=1.0)
    whole = chat(sdk, **kwargs)
    chunks = stream_chunks(sdk, **kwargs)
    assert all(len(c.choices) == 1 for c in chunks)
    roles = [c.choices[0].index for c in chunks if c.choices[0].delta.role == "assistant"]
    assert roles == [0, 1, 2]
    for choice in whole.choices:
        mine = [c.choices[0] for c in chunks if c.choices[0].index == choice.index]
        assert "".join(c.delta.content or "" for c in mine) == choice.message.content
        assert [c.finish_reason for c in mine if c.finish_reason] == [choice.finish_reason]
    assert len({c.message.content for c in whole.choices}) == 3


def test_vllm_extras_top_k_min_p_repetition_penalty(sdk):
    greedy = chat(sdk, max_tokens=20, temperature=0).choices[0].message.content
    top1 = chat(sdk, max_tokens=20, temperature=1.5, extra_body={"top_k": 1}).choices[0].message.content
    near_greedy = chat(sdk, max_tokens=20, temperature=1.5, extra_body={"min_p": 1.0})
    repeated = chat(sdk, max_tokens=20, temperature=0, extra_body={"repetition_penalty": 2.0})
    assert top1 == greedy
    assert near_greedy.choices[0].message.content == greedy
    assert repeated.choices[0].message.content != greedy
    with pytest.raises(openai.BadRequestError) as bad:
        chat(sdk, max_tokens=2, extra_body={"top_k": -5})
    assert bad.value.param == "top_k"


def test_presence_frequency_penalties_and_logit_bias(sdk, chat_tokenizer):
    greedy = chat(sdk, max_tokens=20, temperature=0, logprobs=True)
    text = greedy.choices[0].message.content
    first = greedy.choices[0].logprobs.content[0]
    banned = chat(
        sdk, max_tokens=20, temperature=0, logprobs=True, logit_bias={token_id(chat_tokenizer, first): -100}
    )
    assert banned.choices[0].logprobs.content[0].token != first.token
    forced_id = chat_tokenizer("queue", add_special_tokens=False)["input_ids"][0]
    forced = chat(sdk, max_tokens=5, temperature=0, logit_bias={str(forced_id): 100})
    assert forced.choices[0].message.content == chat_tokenizer.decode([forced_id] * 5)

    for penalty in ("presence_penalty", "frequency_penalty"):
        penalised = chat(sdk, max_tokens=20, temperature=0, **{penalty: 2.0}).choices[0].message.content
        assert penalised != text
        with pytest.raises(openai.BadRequestError) as bad:
            chat(sdk, max_tokens=2, **{penalty: 2.5})
        assert bad.value.param == penalty
    with pytest.raises(openai.BadRequestError) as bad:
        chat(sdk, max_tokens=2, logit_bias={"999999": 5})
    assert bad.value.param == "logit_bias"


def test_ignore_eos_and_stop_token_ids(sdk, chat_tokenizer):
    ignored = chat(sdk, max_tokens=40, seed=9, extra_body={"ignore_eos": True})
    assert ignored.choices[0].finish_reason == "length" and ignored.usage.completion_tokens == 40

    greedy = chat(sdk, max_tokens=30, temperature=0, logprobs=True, logit_bias=NO_SPECIALS)
    entries = greedy.choices[0].logprobs.content
    ids = [token_id(chat_tokenizer, e) for e in entries]
    stop_id = ids[5]
    first = ids.index(stop_id)  # the token may have come before position 5 too
    stopped = chat(
        sdk, max_tokens=30, temperature=0, logit_bias=NO_SPECIALS, extra_body={"stop_token_ids": [stop_id]}
    )
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.usage.completion_tokens == first + 1
    # vLLM's semantics: the stop token's own text stays in the output.
    expected = bytes(b for e in entries[: first + 1] for b in e.bytes).decode(errors="replace")
    assert stopped.choices[0].message.content == expected


def test_unsupported_parameters_are_still_refused(sdk):
    with pytest.raises(openai.BadRequestError) as functions:  # deprecated: tools replace them
        chat(sdk, extra_body={"functions": [{"name": "f", "parameters": {}}]})
    with pytest.raises(openai.BadRequestError) as echo:
        chat(sdk, extra_body={"echo": True})
    assert functions.value.code == echo.value.code == "unsupported_parameter"


# -- seeds ---------------------------------------------------------------------------------------------


def test_same_seed_same_text_alone_or_batched_with_concurrent_jobs(sdk):
    target = dict(max_tokens=40, seed=4242, temperature=0.9, top_p=0.9, n=2, extra_body={"top_k": 50})
    alone = [c.message.content for c in chat(sdk, **target).choices]

    noise = [
        dict(max_tokens=60, temperature=1.2, extra_body={"min_p": 0.05}),
        dict(max_tokens=50, temperature=0.7, presence_penalty=1.0, extra_body={"repetition_penalty": 1.2}),
        dict(max_tokens=45, temperature=0, logprobs=True, top_logprobs=5),
        dict(max_tokens=55, temperature=1.0, seed=1, n=2),
    ]

    def run(kwargs):
        return [c.message.content for c in chat(sdk, **kwargs).choices]

    def streamed(kwargs):
        texts: dict[int, str] = {}
        for chunk in chat(sdk, stream=True, **kwargs):
            for c in chunk.choices:
                texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
        return [texts[i] for i in sorted(texts)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(run, kw) for kw in noise[:2]]
        together = [pool.submit(run, target), pool.submit(streamed, target)]
        futures += [pool.submit(run, kw) for kw in noise[2:]]
        assert [f.result() for f in together] == [alone, alone]
        for f in futures:
            f.result()
    assert alone[0] != alone[1]


# -- completions ---------------------------------------------------------------------------------------


def test_completion_logprobs_and_echo(sdk):
    prompt = "Once upon a time"
    r = sdk.completions.create(
        model="tiny-chat", prompt=prompt, max_tokens=6, logprobs=2, echo=True, seed=1, logit_bias=NO_SPECIALS
    )
    choice = r.choices[0]
    lp = choice.logprobs
    assert choice.text.startswith(prompt)
    n = r.usage.prompt_tokens + r.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(v <= 0 for v in lp.token_logprobs[1:])
    assert all(1 <= len(top) <= 3 for top in lp.top_logprobs[1:])  # the chosen one is always there
    for token, value, top in zip(lp.tokens[1:], lp.token_logprobs[1:], lp.top_logprobs[1:], strict=True):
        if "\ufffd" not in token:  # pieces of different characters share that string
            assert top[token] == pytest.approx(value)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    if "\ufffd" not in "".join(lp.tokens):  # no character split across tokens
        assert "".join(lp.tokens) == choice.text
        assert all(choice.text[o:].startswith(t) for t, o in zip(lp.tokens, lp.text_offset, strict=True))

    plain = sdk.completions.create(
        model="tiny-chat", prompt=prompt, max_tokens=6, seed=1, logit_bias=NO_SPECIALS
    )
    assert plain.choices[0].logprobs is None and choice.text == prompt + plain.choices[0].text


def test_completion_stream_logprobs_and_echo_match_the_whole(sdk):
    kwargs = dict(
        model="tiny-chat", prompt=["The queue", "A worker"], max_tokens=8, logprobs=1, echo=True, seed=8
    )
    whole = sdk.completions.create(**kwargs)
    chunks = [c for c in sdk.completions.create(stream=True, **kwargs) if c.choices]
    for choice in whole.choices:
        mine = [c.choices[0] for c in chunks if c.choices[0].index == choice.index]
        assert "".join(c.text for c in mine) == choice.text
        assert mine[0].text.startswith(["The queue", "A worker"][choice.index])
        tokens = [t for c in mine if c.logprobs for t in c.logprobs.tokens]
        offsets = [o for c in mine if c.logprobs for o in c.logprobs.text_offset]
        assert tokens == choice.logprobs.tokens and offsets == choice.logprobs.text_offset


def test_token_id_prompts(sdk, chat_tokenizer):
    texts = ["Once upon a time", "The queue"]
    ids = [chat_tokenizer(t)["input_ids"] for t in texts]
    by_text = sdk.completions.create(model="tiny-chat", prompt=texts, max_tokens=8, seed=2, echo=True)
    by_ids = sdk.completions.create(model="tiny-chat", prompt=ids, max_tokens=8, seed=2, echo=True)
    one = sdk.completions.create(model="tiny-chat", prompt=ids[0], max_tokens=8, seed=2)
    assert [c.text for c in by_ids.choices] == [c.text for c in by_text.choices]
    assert by_ids.usage.prompt_tokens == sum(len(i) for i in ids)
    assert by_text.choices[0].text == texts[0] + one.choices[0].text
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.completions.create(model="tiny-chat", prompt=[1, 10**6], max_tokens=2)
    assert bad.value.param == "prompt"


def test_max_tokens_is_clamped_to_the_context_and_a_full_prompt_is_refused(sdk):
    prompt = [100 + i % 50 for i in range(CONTEXT - 6)]
    r = sdk.completions.create(
        model="tiny-chat", prompt=prompt, max_tokens=100, extra_body={"ignore_eos": True}, seed=1
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 6 and r.usage.total_tokens == CONTEXT
    with pytest.raises(openai.BadRequestError) as full:
        sdk.completions.create(model="tiny-chat", prompt=[100] * CONTEXT, max_tokens=1)
    assert full.value.code == "context_length_exceeded"


# -- embeddings and rerank -------------------------------------------------------------------------------


def test_embeddings_of_token_ids_and_dimensions(sdk, minilm_tokenizer):
    texts = ["a cat sits on the mat", "stock markets fell"]
    full = np.array([d.embedding for d in sdk.embeddings.create(model="minilm", input=texts).data])
    ids = [minilm_tokenizer(t)["input_ids"] for t in texts]
    by_ids = np.array([d.embedding for d in sdk.embeddings.create(model="minilm", input=ids).data])
    np.testing.assert_allclose(by_ids, full, atol=1e-5)
    one = sdk.embeddings.create(model="minilm", input=ids[0]).data
    assert len(one) == 1 and np.allclose(one[0].embedding, full[0], atol=1e-5)

    short = np.array(
        [d.embedding for d in sdk.embeddings.create(model="minilm", input=texts, dimensions=64).data]
    )
    assert short.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-5)
    expected = full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True)
    np.testing.assert_allclose(short, expected, atol=1e-5)
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.embeddings.create(model="minilm", input="x", dimensions=385)
    assert bad.value.param == "dimensions"


def test_rerank_answers_tei_requests_in_tei_shape(api_server):
    docs = ["Redis is an in-memory store", "Paris is in France", "rq is a Redis queue"]
    cohere = requests.post(
        api_server.url + "/v1/rerank",
        json={"model": "tiny-reranker", "query": "what is redis", "documents": docs},
        timeout=30,
    ).json()
    probability = {r["index"]: r["relevance_score"] for r in cohere["results"]}
    for path in ("/rerank", "/v1/rerank"):
        response = requests.post(
            api_server.url + path,
            json={
                "model": "tiny-reranker",
                "query": "what is redis",
                "texts": docs,
                "raw_scores": True,
                "return_text": True,
            },
            timeout=30,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert isinstance(body, list) and sorted(item["index"] for item in body) == [0, 1, 2]
        scores = [item["score"] for item in body]
        assert scores == sorted(scores, reverse=True)
        for item in body:
            assert item["text"] == docs[item["index"]]
            assert 1 / (1 + math.exp(-item["score"])) == pytest.approx(probability[item["index"]], abs=1e-5)
    plain = requests.post(
        api_server.url + "/rerank",
        json={"model": "tiny-reranker", "query": "what is redis", "texts": docs},
        timeout=30,
    ).json()
    assert all(set(item) == {"index", "score"} and 0 <= item["score"] <= 1 for item in plain)
    assert {item["index"]: item["score"] for item in plain} == pytest.approx(probability, abs=1e-6)
