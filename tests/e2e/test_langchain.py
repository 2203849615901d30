"""LangChain's OpenAI integration (langchain-openai) against bin/api and bin/worker.

Configured as the README says for local servers: ``OpenAIEmbeddings`` with
``check_embedding_ctx_length=False`` sends text, where by default it would tokenize with tiktoken
(whose encodings download from the internet) and send token ids.
"""

import asyncio
from typing import Literal

import numpy as np
import openai
import pytest
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from pydantic import BaseModel, Field

MESSAGES = [("system", "Be brief."), ("human", "Tell me about Redis.")]
TEXTS = ["a cat sits on the mat", "a kitten is on the rug", "stock markets fell today"]


def chat_model(api_server, **kwargs) -> ChatOpenAI:
    options = dict(model="tiny-chat", max_tokens=16, seed=17, max_retries=0, timeout=60)
    return ChatOpenAI(base_url=api_server.url + "/v1", api_key="EMPTY", **{**options, **kwargs})


def test_chat_openai_invoke_and_stream(api_server, sdk):
    llm = chat_model(api_server)
    whole = llm.invoke(MESSAGES)
    expected = sdk.chat.completions.create(
        model="tiny-chat",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Tell me about Redis."},
        ],
        max_tokens=16,
        seed=17,
    )
    assert whole.content == expected.choices[0].message.content
    assert whole.response_metadata["finish_reason"] == expected.choices[0].finish_reason
    assert whole.usage_metadata["output_tokens"] == expected.usage.completion_tokens
    assert whole.usage_metadata["input_tokens"] == expected.usage.prompt_tokens

    chunks = list(llm.stream(MESSAGES))
    assert "".join(chunk.content for chunk in chunks) == whole.content
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged += chunk
    assert merged.response_metadata.get("finish_reason") == expected.choices[0].finish_reason


def test_chat_openai_stream_usage(api_server):
    # stream_usage asks for stream_options.include_usage: the last chunk carries the counts.
    merged = None
    for chunk in chat_model(api_server, stream_usage=True).stream(MESSAGES):
        merged = chunk if merged is None else merged + chunk
    assert merged.usage_metadata["output_tokens"] >= 1
    assert merged.usage_metadata["total_tokens"] == (
        merged.usage_metadata["input_tokens"] + merged.usage_metadata["output_tokens"]
    )


def test_chat_openai_errors_are_the_sdk_exceptions(api_server):
    with pytest.raises(openai.NotFoundError):
        chat_model(api_server, model="nope").invoke(MESSAGES)
    with pytest.raises(openai.BadRequestError):
        chat_model(api_server, model="minilm").invoke(MESSAGES)


def test_chat_openai_async(api_server):
    llm = chat_model(api_server)

    async def both():
        whole = await llm.ainvoke(MESSAGES)
        streamed = [chunk.content async for chunk in llm.astream(MESSAGES)]
        return whole.content, "".join(streamed)

    whole, streamed = asyncio.run(both())
    assert whole == streamed == llm.invoke(MESSAGES).content


def test_openai_embeddings(api_server, sdk):
    embeddings = OpenAIEmbeddings(
        base_url=api_server.url + "/v1",
        api_key="EMPTY",
        model="text-embedding-3-small",  # an alias of minilm in the test models file
        check_embedding_ctx_length=False,  # send text: no tiktoken, no token ids
        max_retries=0,
    )
    documents = np.array(embeddings.embed_documents(TEXTS))
    expected = np.array([d.embedding for d in sdk.embeddings.create(model="minilm", input=TEXTS).data])
    assert documents.shape == expected.shape and np.allclose(documents, expected, atol=1e-6)
    query = np.array(embeddings.embed_query(TEXTS[2]))
    assert np.allclose(query, expected[2], atol=1e-5)
    assert np.allclose(asyncio.run(embeddings.aembed_documents(TEXTS)), expected, atol=1e-6)


class GetWeather(BaseModel):
    """Weather in a city."""

    city: str = Field(max_length=16)
    unit: Literal["celsius", "fahrenheit"]


class Person(BaseModel):
    """A person, every length bounded so the random model finishes."""

    name: str = Field(pattern=r"^[A-Z][a-z]{1,8}$")
    age: int = Field(ge=0, le=120)


WEATHER = [("human", "What is the weather in Paris?")]


@pytest.mark.parametrize("tool_choice", ["GetWeather", "any"])
def test_chat_openai_bind_tools(api_server, tools_model, tool_choice):
    llm = chat_model(api_server, model=tools_model, max_tokens=80)
    llm = llm.bind_tools([GetWeather], tool_choice=tool_choice)
    message = llm.invoke(WEATHER)
    (call,) = message.tool_calls[:1]
    assert call["name"] == "GetWeather" and call["id"].startswith("call_")
    GetWeather.model_validate(call["args"])
    merged = None
    for chunk in llm.stream(WEATHER):
        merged = chunk if merged is None else merged + chunk
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [
        (c["name"], c["args"]) for c in message.tool_calls
    ]


def test_chat_openai_with_structured_output(api_server, tools_model):
    for method in ("json_schema", "function_calling"):
        llm = chat_model(api_server, model=tools_model, max_tokens=80)
        person = llm.with_structured_output(Person, method=method).invoke([("human", "Describe someone.")])
        assert isinstance(person, Person), method
