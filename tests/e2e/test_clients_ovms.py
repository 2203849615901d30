"""Clients of OpenVINO Model Server: the openai SDK pointed at ``<server>/v3``, extras in extra_body."""

import numpy as np
import openai
import pytest

MESSAGES = [{"role": "user", "content": "Tell me about Redis."}]
DOCS = ["Redis is an in-memory store", "Paris is in France", "bananas"]


@pytest.fixture(scope="module")
def v3(api_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=api_server.url + "/v3", api_key="unused", max_retries=0, timeout=60)


def test_models(v3, sdk):
    assert {m.id for m in v3.models.list()} == {m.id for m in sdk.models.list()}
    assert v3.models.retrieve("gpt-test").id == "tiny-chat"


def test_chat_with_extra_body_is_what_v1_answers(v3, sdk):
    # OVMS clients send sampling extras such as top_k in extra_body; /v3 hands them on unchanged.
    kwargs = dict(model="tiny-chat", messages=MESSAGES, max_tokens=16, seed=41, extra_body={"top_k": 20})
    whole = v3.chat.completions.create(**kwargs)
    assert (
        whole.choices[0].message.content == sdk.chat.completions.create(**kwargs).choices[0].message.content
    )
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in v3.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
        if c.choices
    )
    assert streamed == whole.choices[0].message.content


def test_completions(v3, sdk):
    kwargs = dict(model="tiny-chat", prompt="Once upon", max_tokens=8, seed=5, extra_body={"top_k": 20})
    assert v3.completions.create(**kwargs).choices[0].text == sdk.completions.create(**kwargs).choices[0].text


def test_embeddings(v3, sdk):
    got = v3.embeddings.create(model="minilm", input=DOCS)
    expected = sdk.embeddings.create(model="minilm", input=DOCS)
    for a, b in zip(got.data, expected.data, strict=True):
        assert np.allclose(a.embedding, b.embedding, atol=1e-6)


def test_rerank(v3):
    body = {"model": "tiny-reranker", "query": "what is redis", "documents": DOCS, "top_n": 2}
    response = v3.post("/rerank", cast_to=object, body=body)
    results = response["results"]
    assert len(results) == 2 and results[0]["relevance_score"] >= results[1]["relevance_score"]
    assert all(r["document"]["text"] == DOCS[r["index"]] for r in results)


def test_errors_keep_the_envelope(v3):
    with pytest.raises(openai.NotFoundError) as caught:
        v3.chat.completions.create(model="nope", messages=MESSAGES)
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        v3.chat.completions.create(model="tiny-chat", messages=MESSAGES, temperature=9)
    assert bad.value.param == "temperature"
