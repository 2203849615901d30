"""Structured output end to end through the official SDK, on the random-weight tiny-chat: every
choice that ends with ``stop`` is valid by construction, whatever the seed, next to free requests."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from typing import Annotated, Literal

import openai
import pytest
from pydantic import BaseModel, Field

MESSAGES = [{"role": "user", "content": "Describe a person as JSON."}]


class Colour(StrEnum):
    red = "red"
    green = "green"
    blue = "blue"


class Address(BaseModel):
    city: str = Field(pattern=r"^[A-Z][a-z]{0,7}$")
    zip: int | None = Field(ge=0, le=99999)


class Pet(BaseModel):
    kind: Literal["cat", "dog"]
    name: str = Field(max_length=4)


class Person(BaseModel):
    """Nested objects, an array, enums, optional fields and anyOf, every length bounded: the longest
    instance is ~150 characters, so a random model always finishes within max_tokens."""

    name: str = Field(pattern=r"^[A-Za-z ]{1,12}$")
    age: int = Field(ge=0, le=120)
    colour: Colour
    home: Address
    tags: list[Annotated[str, Field(pattern=r"^[a-z]{1,4}$")]] = Field(max_length=3)
    pet: Pet | Address | None


def parse(sdk: openai.OpenAI, seed: int, n: int):
    return sdk.chat.completions.parse(
        model="tiny-chat", messages=MESSAGES, response_format=Person, n=n, seed=seed, max_tokens=200
    )


def test_parse_gives_a_valid_object_for_every_choice_and_seed_next_to_free_requests(sdk):
    free_kwargs = dict(model="tiny-chat", messages=MESSAGES, max_tokens=40, temperature=0)
    with ThreadPoolExecutor(8) as pool:
        free = [pool.submit(sdk.chat.completions.create, **free_kwargs, n=4)]
        # Choice j of a request with seed s samples with seed s + j: 200 distinct seeds.
        parsed = list(pool.map(lambda seed: parse(sdk, seed, 25), range(0, 800, 100)))
        free += [pool.submit(sdk.chat.completions.create, **free_kwargs)]
    choices = [c for r in parsed for c in r.choices]
    assert len(choices) == 200
    for choice in choices:  # parse() raises for a choice cut by max_tokens: none was
        assert choice.finish_reason == "stop" and isinstance(choice.message.parsed, Person)
    assert len({c.message.content for c in choices}) > 150
    # The free rows shared batches with constrained ones and were left alone: the text they give alone.
    alone = sdk.chat.completions.create(**free_kwargs).choices[0]
    assert alone.finish_reason == "length"
    for future in free:
        assert [c.message.content for c in future.result().choices] == [alone.message.content] * len(
            future.result().choices
        )


def test_a_seed_reproduces_a_constrained_choice_streamed_or_not(sdk):
    kwargs = dict(model="tiny-chat", messages=MESSAGES, response_format=Person, seed=5, max_tokens=200)
    whole = sdk.chat.completions.parse(**kwargs).choices[0].message
    assert sdk.chat.completions.parse(**kwargs).choices[0].message.content == whole.content
    with sdk.chat.completions.stream(**kwargs) as stream:
        streamed = stream.get_final_completion().choices[0].message
    assert streamed.content == whole.content and streamed.parsed == whole.parsed


def test_json_object_mode(sdk):
    r = sdk.chat.completions.create(
        model="tiny-chat",
        messages=MESSAGES,
        response_format={"type": "json_object"},
        n=24,
        seed=1,
        max_tokens=120,
    )
    finished = [c for c in r.choices if c.finish_reason == "stop"]
    assert finished and all(c.finish_reason in ("stop", "length") for c in r.choices)
    for choice in finished:
        assert isinstance(json.loads(choice.message.content), dict)
    for choice in r.choices:
        assert choice.message.content.startswith("{")


def test_regex_and_choice_through_structured_outputs(sdk):
    pattern = r"[0-9]{3}-[a-z]{2,4}"
    r = sdk.chat.completions.create(
        model="tiny-chat",
        messages=MESSAGES,
        n=20,
        seed=2,
        extra_body={"structured_outputs": {"regex": pattern}},
    )
    assert all(re.fullmatch(pattern, c.message.content) and c.finish_reason == "stop" for c in r.choices)

    options = ["yes", "no", "maybe later"]
    r = sdk.completions.create(
        model="tiny-chat",
        prompt=["Well?", "Shall we?"],
        n=10,
        max_tokens=20,
        extra_body={"structured_outputs": {"choice": options}},
    )
    assert len(r.choices) == 20 and all(c.text in options and c.finish_reason == "stop" for c in r.choices)
    assert len({c.text for c in r.choices}) > 1


def test_a_lark_grammar_on_completions(sdk):
    grammar = 'start: "(" NUMBER ("+" NUMBER)* ")"\nNUMBER: /[1-9][0-9]?/'
    r = sdk.completions.create(
        model="tiny-chat",
        prompt="Sum:",
        n=8,
        max_tokens=60,
        seed=4,
        extra_body={"structured_outputs": {"grammar": grammar}},
    )
    for choice in r.choices:
        if choice.finish_reason == "stop":
            assert re.fullmatch(r"\([1-9][0-9]?(\+[1-9][0-9]?)*\)", choice.text)
        else:
            assert choice.finish_reason == "length" and re.fullmatch(r"\([0-9+]*", choice.text)


def test_max_tokens_cuts_a_schema_with_length(sdk):
    r = sdk.chat.completions.create(
        model="tiny-chat",
        messages=MESSAGES,
        max_tokens=5,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "p", "schema": Person.model_json_schema()},
        },
    )
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5
    with pytest.raises(openai.LengthFinishReasonError):
        sdk.chat.completions.parse(model="tiny-chat", messages=MESSAGES, response_format=Person, max_tokens=5)


def test_a_bad_schema_is_a_400_naming_response_format(sdk):
    bad = {
        "type": "json_schema",
        "json_schema": {"name": "bad", "schema": {"type": "object", "properties": {"a": {"type": "nope"}}}},
    }
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(model="tiny-chat", messages=MESSAGES, response_format=bad)
    assert caught.value.body["param"] == "response_format" and "nope" in caught.value.body["message"]
