"""The Responses API through the official SDK against the live stack: create and stream, usage and
incomplete_details, function calls and their outputs, text.format, the store and
previous_response_id, the aliases, and the 400s."""

from __future__ import annotations

import json

import openai
import pytest
import requests
from pydantic import BaseModel, Field

#: tiny-chat with room for tool schemas and conversations in its context (tests/e2e/conftest.py).
MODEL = "tiny-chat-tools"
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


@pytest.fixture(autouse=True, scope="module")
def _worker(tools_model) -> None:
    assert tools_model == MODEL


def create(sdk, **kwargs):
    options = dict(model=MODEL, input="Say something.", max_output_tokens=12, extra_body={"seed": 1})
    return sdk.responses.create(**{**options, **kwargs})


def test_create_has_openai_fields_and_output_text(sdk) -> None:
    response = create(sdk, instructions="Be brief.", metadata={"k": "v"}, user="u1")
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "incomplete"  # tiny-chat writes until max_output_tokens
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].type == "message" and response.output[0].role == "assistant"
    assert response.output_text and response.output_text == response.output[0].content[0].text
    assert response.usage.output_tokens == 12
    assert response.usage.total_tokens == response.usage.input_tokens + 12
    assert response.instructions == "Be brief." and response.metadata == {"k": "v"}


def test_a_schema_that_closes_ends_it_completed(sdk) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}
    response = create(sdk, text={"format": fmt}, max_output_tokens=40)
    assert response.status == "completed", response
    assert response.incomplete_details is None
    assert isinstance(json.loads(response.output_text)["ok"], bool)
    assert response.text.format.type == "json_schema"


def test_text_format_json_schema_gives_valid_json(sdk) -> None:
    class City(BaseModel):
        name: str = Field(max_length=8)
        big: bool

    parsed = sdk.responses.parse(
        model=MODEL, input="A city?", text_format=City, max_output_tokens=200, extra_body={"seed": 4}
    )
    assert isinstance(parsed.output_parsed, City)


def test_stream_events_rise_and_end_as_the_created_response(sdk) -> None:
    whole = create(sdk)
    with sdk.responses.stream(
        model=MODEL, input="Say something.", max_output_tokens=12, extra_body={"seed": 1}
    ) as s:
        events = list(s)
    numbers = [e.sequence_number for e in events]
    assert numbers == list(range(len(events)))
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    final = events[-1].response
    assert final.id == events[0].response.id
    assert final.output_text == whole.output_text
    assert final.usage.output_tokens == 12 and final.incomplete_details.reason == "max_output_tokens"


def test_the_sdk_stream_helper_gives_the_completed_response(sdk) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    kwargs = dict(
        model=MODEL,
        input="Yes?",
        text={"format": {"type": "json_schema", "name": "a", "schema": schema}},
        max_output_tokens=40,
        extra_body={"seed": 2},
    )
    whole = sdk.responses.create(**kwargs)
    with sdk.responses.stream(**kwargs) as s:
        final = s.get_final_response()
    assert final.status == "completed" and final.output_text == whole.output_text
    assert final.id != whole.id and sdk.responses.retrieve(final.id).output_text == whole.output_text


def test_a_function_call_and_its_output_continue_over_turns(sdk) -> None:
    first = create(
        sdk, input="Weather in Paris?", tools=[WEATHER], tool_choice="required", max_output_tokens=60
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and first.status == "completed"
    assert json.loads(calls[0].arguments)["city"]
    assert calls[0].id.startswith("fc_") and calls[0].call_id
    # Turn 2: the call's output, by previous_response_id (the call comes from the store).
    second = create(
        sdk,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"temp": 21}'}],
        tools=[WEATHER],
        max_output_tokens=8,
    )
    assert second.previous_response_id == first.id and second.output_text
    # Turn 3 continues turn 2: all three turns are in its prompt.
    third = create(
        sdk, previous_response_id=second.id, input="And tomorrow?", tools=[WEATHER], max_output_tokens=8
    )
    assert third.usage.input_tokens > second.usage.input_tokens > first.usage.input_tokens
    # The same conversation sent whole, without the store, is the same prompt.
    again = create(
        sdk,
        store=False,
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": calls[0].call_id,
                "name": calls[0].name,
                "arguments": calls[0].arguments,
            },
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"temp": 21}'},
        ],
        tools=[WEATHER],
        max_output_tokens=8,
    )
    assert again.usage.input_tokens == second.usage.input_tokens
    assert again.output_text == second.output_text


def test_a_streamed_call_has_argument_events(sdk) -> None:
    with sdk.responses.stream(
        model=MODEL, input="Weather?", tools=[WEATHER], tool_choice="required", max_output_tokens=60
    ) as s:
        types = [e.type for e in s]
        final = s.get_final_response()
    assert (
        "response.function_call_arguments.delta" in types and "response.function_call_arguments.done" in types
    )
    call = final.output[0]
    assert call.type == "function_call" and json.loads(call.arguments)["city"]


def test_stored_responses_get_input_items_and_delete(sdk, api_server) -> None:
    response = create(sdk, input=[{"role": "user", "content": [{"type": "input_text", "text": "Hi"}]}])
    got = sdk.responses.retrieve(response.id)
    assert got.id == response.id and got.output_text == response.output_text and got.status == response.status
    items = sdk.responses.input_items.list(response.id)
    assert [item.content[0].text for item in items.data] == ["Hi"]
    deleted = requests.delete(f"{api_server.url}/v1/responses/{response.id}", timeout=10).json()
    assert deleted == {"id": response.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(response.id)


def test_store_false_keeps_nothing(sdk) -> None:
    response = create(sdk, store=False)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(response.id)


@pytest.mark.parametrize("prefix", ["/api/v1", "/v3"])
def test_the_aliases_serve_it(api_server, prefix) -> None:
    body = {"model": MODEL, "input": "Hi", "max_output_tokens": 4}
    answer = requests.post(f"{api_server.url}{prefix}/responses", json=body, timeout=30)
    assert answer.status_code == 200 and answer.json()["object"] == "response"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [{"type": "input_image", "image_url": "x"}]}, "input.0.type"),
        ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input.0.call_id"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{"}]}, "input"),
        ({"input": []}, "input"),
        ({"input": 3}, "input"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        ({"tools": [{"type": "function", "name": "bad name"}]}, "tools.0.name"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"background": True, "store": False}, "background"),
        ({"previous_response_id": "resp_nope"}, "previous_response_id"),
    ],
)
def test_bad_input_is_a_400_naming_the_parameter(api_server, body, param) -> None:
    answer = requests.post(
        f"{api_server.url}/v1/responses", json={"model": MODEL, "input": "Hi", **body}, timeout=30
    )
    expected = 404 if param == "previous_response_id" else 400
    assert answer.status_code == expected, answer.text
    error = answer.json()["error"]
    assert error["param"] is not None and error["param"].startswith(param), error
