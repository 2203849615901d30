"""Tool calling end to end through the official SDK, on the random-weight tiny-chat (hermes format):
the tool_choice grammars make every call valid, streamed calls equal non-streamed ones, and
conversations with calls and results render and run."""

from __future__ import annotations

import json
from typing import Literal

import openai
import pytest
import requests
from pydantic import BaseModel, Field

from tests.e2e.test_websocket import exchange, sse_chunks, without_ids, ws  # noqa: F401 (fixture)

MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
#: tiny-chat with room for tool schemas in its context (tests/e2e/conftest.py).
MODEL = "tiny-chat-tools"


@pytest.fixture(autouse=True, scope="module")
def _worker(tools_model) -> None:
    assert tools_model == MODEL


class GetWeather(BaseModel):
    """Weather in a city."""

    city: str = Field(max_length=16)
    unit: Literal["celsius", "fahrenheit"]


class GetTime(BaseModel):
    """The time in a time zone."""

    zone: str = Field(pattern=r"^[A-Z][a-z]{0,9}$")


TOOLS = [openai.pydantic_function_tool(GetWeather), openai.pydantic_function_tool(GetTime)]
ARGUMENTS = {"GetWeather": GetWeather, "GetTime": GetTime}
NAMED = {"type": "function", "function": {"name": "GetWeather"}}


def chat(sdk, **kwargs):
    options = dict(model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=80, temperature=1.0)
    return sdk.chat.completions.create(**{**options, **kwargs})


def check_calls(message) -> None:
    """Every call names an offered tool and its arguments validate against that tool's parameters."""
    assert message.tool_calls
    for call in message.tool_calls:
        assert call.id.startswith("call_") and call.type == "function"
        ARGUMENTS[call.function.name].model_validate_json(call.function.arguments)


def test_required_calls_are_valid_for_every_seed(sdk) -> None:
    for seed in range(12):
        response = chat(sdk, tool_choice="required", seed=seed)
        choice = response.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        assert choice.message.content is None
        check_calls(choice.message)


def test_a_named_tool_choice_calls_that_function_and_ends_with_stop(sdk) -> None:
    response = chat(sdk, tool_choice=NAMED, seed=3, n=3)
    for choice in response.choices:
        assert choice.finish_reason == "stop"
        assert [call.function.name for call in choice.message.tool_calls] == ["GetWeather"]
        check_calls(choice.message)


def test_parallel_tool_calls_false_makes_one_call(sdk) -> None:
    for seed in range(4):
        choice = chat(sdk, tool_choice="required", parallel_tool_calls=False, seed=seed).choices[0]
        assert len(choice.message.tool_calls) == 1


def test_the_sdk_parses_strict_tool_arguments(sdk) -> None:
    parsed = sdk.chat.completions.parse(
        model=MODEL, messages=MESSAGES, tools=TOOLS, tool_choice=NAMED, seed=5, max_tokens=80
    )
    arguments = parsed.choices[0].message.tool_calls[0].function.parsed_arguments
    assert isinstance(arguments, GetWeather)


def test_a_streamed_call_accumulates_into_the_non_streamed_one(sdk) -> None:
    kwargs = dict(model=MODEL, messages=MESSAGES, tools=TOOLS, max_tokens=80, seed=11)
    for choice in ("required", NAMED):
        whole = sdk.chat.completions.create(tool_choice=choice, **kwargs).choices[0]
        with sdk.chat.completions.stream(tool_choice=choice, **kwargs) as stream:
            streamed = stream.get_final_completion().choices[0]
        assert streamed.finish_reason == whole.finish_reason
        assert [(c.function.name, c.function.arguments) for c in streamed.message.tool_calls] == [
            (c.function.name, c.function.arguments) for c in whole.message.tool_calls
        ]


def test_stream_chunks_send_id_type_and_name_once_then_arguments(api_server) -> None:
    body = {
        "model": MODEL,
        "messages": MESSAGES,
        "tools": TOOLS,
        "tool_choice": "required",
        "seed": 2,
        "max_tokens": 80,
    }
    chunks = sse_chunks(api_server, "/v1/chat/completions", body)
    fragments = [f for c in chunks for ch in c["choices"] for f in ch["delta"].get("tool_calls", [])]
    assert fragments
    started: set[int] = set()
    for fragment in fragments:
        if fragment["index"] not in started:
            assert set(fragment) == {"index", "id", "type", "function"} and fragment["type"] == "function"
            assert set(fragment["function"]) == {"name", "arguments"}
            started.add(fragment["index"])
        else:
            assert set(fragment) == {"index", "function"} and set(fragment["function"]) == {"arguments"}
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert finishes == ["tool_calls"]


def test_tool_calls_over_the_websocket_are_the_sse_chunks(ws, api_server) -> None:  # noqa: F811
    body = {"model": MODEL, "messages": MESSAGES, "tools": TOOLS, "tool_choice": NAMED, "seed": 4}
    over_ws = exchange(ws, {"type": "chat", **body})
    over_sse = sse_chunks(api_server, "/v1/chat/completions", body)
    assert without_call_ids(without_ids(over_ws)) == without_call_ids(without_ids(over_sse))
    assert any(ch["delta"].get("tool_calls") for c in over_ws for ch in c["choices"])


def without_call_ids(chunks: list) -> list:
    """The chunks with each call's id blanked (ids are new for every request)."""
    text = json.dumps(chunks)
    for chunk in chunks:
        for choice in chunk["choices"]:
            for fragment in choice["delta"].get("tool_calls", []):
                if "id" in fragment:
                    text = text.replace(fragment["id"], "call_")
    return json.loads(text)


def test_auto_answers_in_text_and_a_call_it_starts_is_valid(sdk, chat_tokenizer) -> None:
    text = chat(sdk, tool_choice="auto", seed=1, max_tokens=20).choices[0]
    assert text.message.tool_calls is None and text.message.content
    assert text.finish_reason == "length"
    # Push the model to open a call: the lazy grammar then makes the rest of it valid.
    marker = str(chat_tokenizer.convert_tokens_to_ids("<tool_call>"))
    for seed in range(4):
        called = chat(sdk, seed=seed, logit_bias={marker: 20}).choices[0]
        assert called.finish_reason == "tool_calls"
        check_calls(called.message)


def test_a_two_turn_tool_conversation_renders_and_runs(sdk) -> None:
    first = chat(sdk, tool_choice=NAMED, seed=7).choices[0].message
    call = first.tool_calls[0]
    history = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"sky": "clear", "celsius": 21})},
    ]
    answer = chat(sdk, messages=history, seed=7, max_tokens=12)
    assert answer.choices[0].message.content and answer.choices[0].message.tool_calls is None
    alone = chat(sdk, seed=7, max_tokens=12)
    assert answer.usage.prompt_tokens > alone.usage.prompt_tokens + 20  # the call and its result are in


def test_tool_choice_none_leaves_the_tools_out(sdk) -> None:
    with_none = chat(sdk, tool_choice="none", seed=9, max_tokens=6)
    without = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, seed=9, max_tokens=6)
    assert with_none.usage.prompt_tokens == without.usage.prompt_tokens
    assert with_none.choices[0].message.content == without.choices[0].message.content


@pytest.mark.parametrize(
    "change, param",
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [], "tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}]},
            "tools.0.function.parameters",
        ),
        ({"tools": [TOOLS[0], TOOLS[0]]}, "tools.1.function.name"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        (
            {
                "messages": [
                    *MESSAGES,
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{"}}
                        ],
                    },
                ]
            },
            "messages.1.tool_calls.0.function.arguments",
        ),
    ],
)
def test_bad_tool_requests_are_400s_naming_the_parameter(api_server, change, param) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "tools": TOOLS, **change}
    response = requests.post(api_server.url + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_completions_still_refuse_tools(sdk) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.completions.create(model=MODEL, prompt="hi", extra_body={"tools": TOOLS})
    assert refused.value.code == "unsupported_parameter"


@pytest.fixture(scope="module")
def chat_tokenizer(models_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(models_dir / "tiny-chat")


def test_models_list_tells_which_models_take_tools_and_when_they_were_made(api_server, models_dir) -> None:
    listed = {m["id"]: m for m in requests.get(api_server.url + "/v1/models", timeout=30).json()["data"]}
    chat, embedding = listed[MODEL], listed["minilm"]
    assert (chat["tools"], chat["tool_parser"]) == (True, "hermes")
    assert (embedding["tools"], embedding["tool_parser"]) == (False, None)
    assert chat["created"] == int((models_dir / "tiny-chat" / "config.json").stat().st_mtime)
    assert embedding["created"] > 1_500_000_000
