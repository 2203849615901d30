"""The official openai SDK against bin/api and bin/worker, through a real Redis."""

import base64
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest
import requests
from rq.job import Job
from rq.serializers import JSONSerializer

from harness import wait_until

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about Redis."}]


def test_models_list_shows_models_with_live_workers(sdk):
    ids = {model.id for model in sdk.models.list()}
    assert {"tiny-chat", "minilm", "tiny-reranker"} <= ids
    assert "ghost" not in ids
    assert sdk.models.retrieve("gpt-test").id == "tiny-chat"


def test_chat_completion(sdk):
    response = sdk.chat.completions.create(model="tiny-chat", messages=MESSAGES, max_tokens=8, seed=1)
    choice = response.choices[0]
    assert response.object == "chat.completion" and response.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    usage = response.usage
    assert usage.prompt_tokens > 5 and 1 <= usage.completion_tokens <= 8
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_max_completion_tokens_and_length(sdk):
    response = sdk.chat.completions.create(
        model="tiny-chat", messages=MESSAGES, max_completion_tokens=5, seed=2
    )
    if response.choices[0].finish_reason == "length":
        assert response.usage.completion_tokens == 5


def test_streaming_equals_non_streaming_for_the_same_seed(sdk):
    kwargs = dict(model="tiny-chat", messages=MESSAGES, max_tokens=40, seed=1234, temperature=1.0)
    whole = sdk.chat.completions.create(**kwargs)
    chunks = list(sdk.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_same_seed_same_text_different_seed_different_text(sdk):
    def text(seed):
        r = sdk.chat.completions.create(model="tiny-chat", messages=MESSAGES, max_tokens=24, seed=seed)
        return r.choices[0].message.content

    assert text(7) == text(7)
    assert text(7) != text(8)


def test_stop_strings_are_honoured_across_tokens_and_not_returned(sdk):
    kwargs = dict(model="tiny-chat", messages=MESSAGES, max_tokens=60, seed=99)
    full = sdk.chat.completions.create(**kwargs).choices[0].message.content
    assert len(full) > 20
    stop = full[10:14]
    cut = full[: full.index(stop)]
    response = sdk.chat.completions.create(stop=[stop, "\u0000never"], **kwargs)
    assert response.choices[0].message.content == cut
    assert response.choices[0].finish_reason == "stop"
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in sdk.chat.completions.create(stop=stop, stream=True, **kwargs)
    )
    assert streamed == cut


def test_text_content_parts(sdk):
    parts = [{"type": "text", "text": "Tell me "}, {"type": "text", "text": "about Redis."}]
    a = sdk.chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": parts}], max_tokens=10, seed=5
    )
    b = sdk.chat.completions.create(
        model="tiny-chat",
        messages=[{"role": "user", "content": "Tell me about Redis."}],
        max_tokens=10,
        seed=5,
    )
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.prompt_tokens == b.usage.prompt_tokens


def test_completions_with_prompt_list_and_n(sdk):
    response = sdk.completions.create(
        model="tiny-chat", prompt=["Once upon", "The queue"], max_tokens=6, n=2, seed=3
    )
    assert response.object == "text_completion"
    assert sorted(c.index for c in response.choices) == [0, 1, 2, 3]
    stream = sdk.completions.create(model="tiny-chat", prompt="Once upon", max_tokens=6, seed=3, stream=True)
    streamed = "".join(c.choices[0].text for c in stream if c.choices)
    alone = sdk.completions.create(model="tiny-chat", prompt="Once upon", max_tokens=6, seed=3)
    assert streamed == alone.choices[0].text


def test_default_completion_length_is_16(sdk):
    response = sdk.completions.create(model="tiny-chat", prompt="Once upon", seed=4)
    assert response.usage.completion_tokens <= 16


def test_context_length_exceeded_is_400(sdk):
    long = "word " * 400  # the test model's context is 256 tokens
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": long}])
    assert caught.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        list(
            sdk.chat.completions.create(
                model="tiny-chat", messages=[{"role": "user", "content": long}], stream=True
            )
        )


def test_embeddings_float_and_base64_agree(sdk):
    texts = ["a cat sits on the mat", "a kitten is on the rug", "stock markets fell today"]
    floats = sdk.embeddings.create(model="minilm", input=texts)
    assert [d.index for d in floats.data] == [0, 1, 2]
    assert floats.usage.prompt_tokens > 10 and floats.usage.total_tokens == floats.usage.prompt_tokens
    raw = requests.post(
        str(sdk.base_url) + "/embeddings",
        json={"model": "minilm", "input": texts, "encoding_format": "base64"},
        timeout=30,
    ).json()
    for item, expected in zip(raw["data"], floats.data, strict=True):
        decoded = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
        assert np.array_equal(decoded, np.asarray(expected.embedding, dtype=np.float32))
    # The SDK asks for base64 itself when numpy is present and decodes it: same vectors.
    sdk_default = sdk.embeddings.create(model="all-MiniLM-L6-v2", input=texts[0])
    assert np.allclose(sdk_default.data[0].embedding, floats.data[0].embedding, atol=1e-6)


def test_embeddings_are_meaningful_and_batch_independent(sdk):
    texts = ["a cat sits on the mat", "a kitten is on the rug", "stock markets fell today"]
    vectors = np.array([d.embedding for d in sdk.embeddings.create(model="minilm", input=texts).data])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    cat, kitten, stocks = vectors
    assert cat @ kitten > cat @ stocks + 0.2
    alone = np.array(sdk.embeddings.create(model="minilm", input=texts[2]).data[0].embedding)
    assert np.allclose(alone, stocks, atol=1e-5)


def test_rq_keeps_a_summary_of_an_embedding_job_not_its_vectors(sdk, redis_server):
    raw = sdk.embeddings.with_raw_response.create(model="minilm", input=["a cat", "a dog"])
    assert len(raw.parse().data) == 2
    job = Job.fetch(raw.headers["X-Job-Id"], connection=redis_server.client(), serializer=JSONSerializer)
    # The client is answered over pub/sub before rq records the job's end.
    wait_until(lambda: job.latest_result() is not None, 5, "rq to record the result")
    kept = job.latest_result().return_value
    assert kept == {"type": "embed", "embeddings": 2, "dimensions": 384, "usage": kept["usage"]}
    assert kept["usage"]["prompt_tokens"] > 0


def test_concurrent_embedding_requests_are_coalesced_into_fewer_jobs(sdk):
    texts = [f"sentence number {i} about {topic}" for i, topic in enumerate(["cats", "redis", "rain"] * 8)]
    reference = [sdk.embeddings.create(model="minilm", input=text).data[0].embedding for text in texts]
    barrier = threading.Barrier(len(texts))

    def embed(text):
        barrier.wait()
        return sdk.embeddings.with_raw_response.create(model="minilm", input=text)

    with ThreadPoolExecutor(len(texts)) as pool:
        raw = list(pool.map(embed, texts))
    job_ids = {response.headers["X-Job-Id"] for response in raw}
    assert len(job_ids) < len(texts)  # the worker ran fewer rq jobs than there were requests
    for response, expected in zip(raw, reference, strict=True):
        body = response.parse()
        assert np.allclose(body.data[0].embedding, expected, atol=1e-5)
        assert body.usage.prompt_tokens > 0


def test_rerank_over_http(api_server):
    docs = ["Redis is an in-memory store", "Paris is in France", "rq is a Redis queue", "bananas"]
    response = requests.post(
        api_server.url + "/v1/rerank",
        json={"model": "tiny-reranker", "query": "what is redis", "documents": docs, "top_n": 3},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    results = body["results"]
    assert len(results) == 3
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert all(r["document"]["text"] == docs[r["index"]] for r in results)
    assert body["usage"]["total_tokens"] > 0
    bare = requests.post(
        api_server.url + "/rerank",
        json={
            "model": "tiny-reranker",
            "query": "what is redis",
            "documents": [{"text": d} for d in docs],
            "return_documents": False,
        },
        timeout=30,
    ).json()
    assert len(bare["results"]) == 4 and "document" not in bare["results"][0]
    by_index = {r["index"]: r["relevance_score"] for r in bare["results"]}
    assert all(abs(by_index[r["index"]] - r["relevance_score"]) < 1e-5 for r in results)


def test_sdk_error_types(sdk):
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model="tiny-chat", messages=MESSAGES, temperature=9)
    assert bad.value.param == "temperature"
    with pytest.raises(openai.BadRequestError):
        sdk.embeddings.create(model="tiny-chat", input="x")
    with pytest.raises(openai.InternalServerError) as unavailable:
        sdk.chat.completions.create(model="ghost", messages=MESSAGES)
    assert unavailable.value.status_code == 503
    assert unavailable.value.response.headers["Retry-After"].isdigit()
