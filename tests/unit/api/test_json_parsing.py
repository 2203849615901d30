"""The strict, bounded JSON parser every request body and WebSocket message goes through."""

from __future__ import annotations

import json
import time

import pytest

from api.json_parsing import MAX_DEPTH, MAX_INT_DIGITS, parse_json
from shared.errors import InvalidRequest


def refused(data: bytes | str) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse_json(data)
    assert info.value.status == 400
    return info.value


@pytest.mark.parametrize(
    "body",
    [
        b'{"max_tokens": ' + b"9" * 5000 + b"}",
        b'{"max_tokens": -' + b"9" * 5000 + b"}",
        b'{"deep": {"list": [1, ' + b"1" * (MAX_INT_DIGITS + 1) + b"]}}",
    ],
)
def test_long_integer_literals_are_refused(body: bytes) -> None:
    assert f"more than {MAX_INT_DIGITS} digits" in refused(body).message


def test_long_digit_runs_inside_strings_and_ints_at_the_limit_are_kept() -> None:
    digits = "7" * 5000
    at_limit = int("9" * MAX_INT_DIGITS)
    assert parse_json(json.dumps({"text": digits, "n": at_limit, "m": -at_limit})) == {
        "text": digits,
        "n": at_limit,
        "m": -at_limit,
    }


@pytest.mark.parametrize("data", [b"[" * 5000 + b"]" * 5000, '{"a": ' * 5000 + "1" + "}" * 5000])
def test_deep_nesting_is_refused(data: bytes | str) -> None:
    assert "nested too deeply" in refused(data).message


def test_depth_limit_is_exact_and_brackets_in_strings_do_not_count() -> None:
    fits = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert parse_json(fits) is not None
    refused("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    brackets = "[{" * 5000
    assert parse_json(json.dumps({"text": brackets, "escaped": '\\"[[[['})) == {
        "text": brackets,
        "escaped": '\\"[[[[',
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"input": "a\\ud800"}', "input"),
        (b'{"input": ["ok", "\\udfffb"]}', "input.1"),
        (b'{"messages": [{"role": "user", "content": "x\\uDBFF"}]}', "messages.0.content"),
        (b'{"logit_bias": {"\\ud800": 1}}', "logit_bias"),
        (b'{"input": "\\ude00\\ud83d"}', "input"),  # a pair in the wrong order is two lone halves
        ('{"input": "a\ud800"}', "input"),  # a str (a WebSocket message) may hold the code point itself
    ],
)
def test_lone_surrogates_are_invalid_unicode(body: bytes | str, param: str) -> None:
    error = refused(body)
    assert error.message.startswith("invalid Unicode") and error.param == param


def test_utf8_encoded_surrogates_and_invalid_utf8_are_invalid_unicode() -> None:
    assert refused(b'{"input": "\xed\xa0\x80"}').message.startswith("invalid Unicode")
    assert refused(b'{"input": "\xff"}').message.startswith("invalid Unicode")


def test_valid_pairs_and_other_encodings_are_kept() -> None:
    assert parse_json(b'{"input": "\\ud83d\\ude00 ok"}') == {"input": "\U0001f600 ok"}
    assert parse_json('{"input": "é😀"}'.encode("utf-16")) == {"input": "é😀"}
    assert parse_json('{"input": "é"}'.encode("utf-8-sig")) == {"input": "é"}
    assert parse_json(b'{"path": "C:\\\\ud800"}') == {"path": "C:\\ud800"}  # an escaped backslash


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_json_constants_are_refused(constant: str) -> None:
    assert "not a JSON value" in refused('{"temperature": ' + constant + "}").message


def test_malformed_json_names_what_was_parsed() -> None:
    assert refused(b"").message.startswith("the request body is not valid JSON")
    with pytest.raises(InvalidRequest, match="the message is not valid JSON"):
        parse_json('{"a": ', what="message")


def test_the_common_path_stays_fast() -> None:
    """A large body of token ids costs little on top of json.loads (the scans are C loops)."""
    body = json.dumps({"model": "m", "input": [[1234] * 200 for _ in range(500)]}).encode()

    def best(parse) -> float:
        times = []
        for _ in range(5):
            started = time.perf_counter()
            parse(body)
            times.append(time.perf_counter() - started)
        return min(times)

    assert parse_json(body) == json.loads(body)
    assert best(parse_json) < 2 * best(json.loads) + 0.005
