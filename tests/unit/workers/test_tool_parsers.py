"""Tool-call parsers on texts as real models write them: whole, and split at every character."""

from __future__ import annotations

import json
import random

import pytest

from shared.tools import ToolCallDelta
from workers.tools import FORMATS, model_tool_format
from workers.tools.template import detect_format, mistral_id, renders_tools

WEATHER = {"location": "San Francisco, CA", "unit": "fahrenheit"}

#: (format, text the model wrote, content expected, calls expected as (name, arguments as written)).
RECORDED = [
    # Qwen2.5-7B-Instruct, one call.
    (
        "hermes",
        '<tool_call>\n{"name": "get_current_weather", "arguments": '
        '{"location": "San Francisco, CA", "unit": "fahrenheit"}}\n</tool_call>',
        "",
        [("get_current_weather", '{"location": "San Francisco, CA", "unit": "fahrenheit"}')],
    ),
    # Qwen2.5, parallel calls (Qwen's function-calling guide).
    (
        "hermes",
        '<tool_call>\n{"name": "get_current_temperature", "arguments": '
        '{"location": "San Francisco, CA, USA"}}'
        '\n</tool_call>\n<tool_call>\n{"name": "get_temperature_date", "arguments": '
        '{"location": "San Francisco, CA, USA", "date": "2024-10-01"}}\n</tool_call>',
        "",
        [
            ("get_current_temperature", '{"location": "San Francisco, CA, USA"}'),
            ("get_temperature_date", '{"location": "San Francisco, CA, USA", "date": "2024-10-01"}'),
        ],
    ),
    # Hermes-2-Pro writes the arguments before the name, after some text.
    (
        "hermes",
        "Let me look that up.\n<tool_call>\n"
        '{"arguments": {"symbol": "TSLA"}, "name": "get_stock_fundamentals"}'
        "\n</tool_call>",
        "Let me look that up.",
        [("get_stock_fundamentals", '{"symbol": "TSLA"}')],
    ),
    # Qwen3 thinks first; braces, quotes, markers and non-ASCII text inside strings.
    (
        "hermes",
        "<think>\nThe user wants code run.\n</think>\n\n<tool_call>\n"
        '{"name": "run", "arguments": {"code": "print(\\"}</tool_call>\\")", '
        '"note": "café 日本", "n": [1, {"a": null}]}}'
        "\n</tool_call>",
        "<think>\nThe user wants code run.\n</think>",
        [("run", '{"code": "print(\\"}</tool_call>\\")", "note": "café 日本", "n": [1, {"a": null}]}')],
    ),
    (
        "hermes",
        "The weather in Paris is sunny, 22 °C. <tool",
        "The weather in Paris is sunny, 22 °C. <tool",
        [],
    ),
    # A marker followed by something that is not a call is text.
    (
        "hermes",
        "<tool_call>\nI cannot call that.</tool_call>",
        "<tool_call>\nI cannot call that.</tool_call>",
        [],
    ),
    # Llama-3.1-8B-Instruct, JSON tool calling.
    (
        "llama3_json",
        '{"name": "get_current_conditions", "parameters": '
        '{"location": "San Francisco, CA", "unit": "Fahrenheit"}}',
        "",
        [("get_current_conditions", '{"location": "San Francisco, CA", "unit": "Fahrenheit"}')],
    ),
    # Llama 3.2 with the python tag kept, and its "type" key.
    (
        "llama3_json",
        '<|python_tag|>{"type": "function", "name": "get_weather", "parameters": {"city": "Paris"}}',
        "",
        [("get_weather", '{"city": "Paris"}')],
    ),
    (
        "llama3_json",
        '{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "get_time", "parameters": {}}',
        "",
        [("get_weather", '{"city": "Paris"}'), ("get_time", "{}")],
    ),
    ("llama3_json", "The capital of France is Paris.", "The capital of France is Paris.", []),
    ("llama3_json", '{"answer": "Paris"}', '{"answer": "Paris"}', []),
    # Mistral-7B-Instruct-v0.3.
    (
        "mistral",
        '[TOOL_CALLS] [{"name": "get_current_weather", "arguments": {"location": "Paris, France", "format": '
        '"celsius"}}]',
        "",
        [("get_current_weather", '{"location": "Paris, France", "format": "celsius"}')],
    ),
    # Mistral Nemo: two calls, with ids, after text.
    (
        "mistral",
        'Checking both.[TOOL_CALLS][{"name": "add", "arguments": {"a": 3.5, "b": 4}, "id": "abc123def"}, '
        '{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "9chars000"}]',
        "Checking both.",
        [("add", '{"a": 3.5, "b": 4}'), ("get_weather", '{"city": "Paris"}')],
    ),
    # Mistral Small 3.x tokenizers (v11+): name then arguments, one marker per call.
    (
        "mistral",
        '[TOOL_CALLS]add_this{"a": 3.5, "b": 4}[TOOL_CALLS]multiply[ARGS]{"a": 3, "b": 6}',
        "",
        [("add_this", '{"a": 3.5, "b": 4}'), ("multiply", '{"a": 3, "b": 6}')],
    ),
    ("mistral", "No tool needed: 2 + 2 = 4.", "No tool needed: 2 + 2 = 4.", []),
]


def parse(fmt: str, pieces: list[str]) -> tuple[str, list[ToolCallDelta], list[tuple[str, str]], list[str]]:
    """Feed the pieces: content, deltas, calls as (name, arguments), call ids."""
    reader = FORMATS[fmt].reader()
    content, deltas = "", []
    for piece in [*pieces, None]:
        text, new = reader.feed(piece) if piece is not None else reader.finish()
        content += text
        deltas += new
    calls = reader.calls
    return content, deltas, [(c.function.name, c.function.arguments) for c in calls], [c.id for c in calls]


def check_deltas(deltas: list[ToolCallDelta], calls: list[tuple[str, str]], ids: list[str]) -> None:
    """OpenAI's stream shape: id and name once, in each call's first delta; then arguments only,
    which join into the call's arguments."""
    seen: dict[int, str] = {}
    for delta in deltas:
        if delta.index not in seen:
            assert delta.id == ids[delta.index] and delta.name == calls[delta.index][0]
            assert delta.index == len(seen)  # calls start in order
            seen[delta.index] = ""
        else:
            assert delta.id is None and delta.name is None
        seen[delta.index] += delta.arguments
    assert [seen[i] for i in sorted(seen)] == [arguments for _, arguments in calls]


@pytest.mark.parametrize("fmt, text, content, calls", RECORDED)
def test_recorded_texts_parse_alike_whole_and_split_anywhere(fmt, text, content, calls) -> None:
    whole = parse(fmt, [text])
    assert whole[0] == content and whole[2] == calls
    for _, arguments in calls:
        json.loads(arguments)  # as the model wrote them: JSON text
    assert all(i.startswith("call_") for i in whole[3])
    check_deltas(whole[1], whole[2], whole[3])
    splits = [list(text)]  # one character at a time
    splits += [[text[:i], text[i:]] for i in range(1, len(text))]  # cut at every place
    rng = random.Random(len(text))
    for _ in range(20):  # random token-sized pieces
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 12))))
        splits.append([text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)])
    for pieces in splits:
        got = parse(fmt, pieces)
        assert (got[0], got[2]) == (content, calls), pieces
        check_deltas(got[1], got[2], got[3])


def test_content_streams_as_it_comes_and_only_a_possible_marker_waits() -> None:
    reader = FORMATS["hermes"].reader()
    assert reader.feed("Hello, wor") == ("Hello, wor", [])
    assert reader.feed("ld <tool") == ("ld", [])  # " <tool" could open a call
    assert reader.feed("s are fun") == (" <tools are fun", [])
    assert reader.finish() == ("", [])


def test_a_call_is_announced_when_its_name_is_complete_then_streams_its_arguments() -> None:
    reader = FORMATS["hermes"].reader()
    assert reader.feed('<tool_call>\n{"name": "get_wea') == ("", [])
    content, deltas = reader.feed('ther", "arguments": {"ci')
    assert content == "" and len(deltas) == 1
    first = deltas[0]
    assert (first.index, first.name, first.arguments) == (0, "get_weather", '{"ci')
    rest = ToolCallDelta(index=0, arguments='ty": "Paris"}')
    assert reader.feed('ty": "Paris"}}\n</tool_call>') == ("", [rest])


def test_a_call_cut_short_keeps_its_arguments_as_written() -> None:
    _, _, calls, _ = parse("hermes", ['Sure.\n<tool_call>\n{"name": "f", "arguments": {"x": "ab'])
    assert calls == [("f", '{"x": "ab')]  # finish_reason length tells the client


def test_arguments_sent_as_a_json_string_are_decoded() -> None:
    text = '<tool_call>\n{"name": "f", "arguments": "{\\"x\\": 1}"}\n</tool_call>'
    assert parse("hermes", [text])[2] == [("f", '{"x": 1}')]
    assert parse("hermes", list(text))[2] == [("f", '{"x": 1}')]


def test_a_call_without_arguments_gets_an_empty_object() -> None:
    assert parse("hermes", ['<tool_call>\n{"name": "now"}\n</tool_call>'])[2] == [("now", "{}")]


def test_text_after_a_broken_call_is_content() -> None:
    content, _, calls, _ = parse("hermes", ['<tool_call>\n{"name": "f", "arguments": {"x": 1]} and more'])
    assert calls == [("f", '{"x": 1')] and content == "]} and more"


TEMPLATES = {
    "hermes": "{% for t in tools %}{{ t | tojson }}{% endfor %}<tool_call>{{ messages }}",
    "mistral": "{%- if tools %}[AVAILABLE_TOOLS]{{ tools|tojson }}[/AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]",
    "llama3_json": (
        "<|start_header_id|>system<|end_header_id|>{% if tools %}Respond in the format "
        '{"name": function name, "parameters": dictionary of argument name and its value}{% endif %}'
    ),
}


@pytest.mark.parametrize("fmt", sorted(TEMPLATES))
def test_the_format_is_detected_from_the_template(fmt) -> None:
    template = TEMPLATES[fmt]
    assert renders_tools(template)
    assert detect_format(template) is FORMATS[fmt]
    assert model_tool_format(None, template) is FORMATS[fmt]
    assert model_tool_format("hermes", template) is FORMATS["hermes"]  # the models file wins


def test_a_template_that_ignores_tools_supports_none() -> None:
    chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>{% endfor %}"
    assert not renders_tools(chatml)
    assert model_tool_format("hermes", chatml) is None
    assert model_tool_format(None, None) is None


def test_mistral_ids_are_nine_letters_and_digits_and_stable() -> None:
    short = mistral_id("call_0123456789abcdef")
    assert len(short) == 9 and short.isalnum() and short == mistral_id("call_0123456789abcdef")
    assert mistral_id("abc123def") == "abc123def"
