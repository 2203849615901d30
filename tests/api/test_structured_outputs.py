"""``response_format`` and ``structured_outputs``: a spec the grammar backend refuses is a 400 naming
its parameter, answered by the API before anything is queued (``ghost`` has no worker: a request
that passes validation gets its 503)."""

from __future__ import annotations

import time

import pytest

from shared.jobs import MAX_CONSTRAINT_BYTES
from tests.api.test_errors import chat_body, error_of

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
#: An enum just over the size the server compiles.
TOO_LARGE = {"enum": ["x" * 1000] * (1 + MAX_CONSTRAINT_BYTES // 1000)}


def json_schema(schema: object, **extra: object) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, **extra}}


def completion_body(**overrides):
    return {"model": "tiny-chat", "prompt": "hi", **overrides}


@pytest.mark.parametrize(
    ("path", "body", "param", "words"),
    [
        (CHAT, chat_body(response_format=json_schema({"type": "strange"})), "response_format", "strange"),
        (CHAT, chat_body(response_format={"type": "json_schema"}), "response_format.json_schema", "schema"),
        (
            CHAT,
            chat_body(response_format=json_schema("not a schema")),
            "response_format.json_schema.schema",
            "",
        ),
        (CHAT, chat_body(response_format={"type": "yaml"}), "response_format.type", ""),
        (CHAT, chat_body(structured_outputs={"regex": "a(b"}), "structured_outputs", "unclosed group"),
        (CHAT, chat_body(structured_outputs={"grammar": "start: x"}), "structured_outputs", "unknown name"),
        (CHAT, chat_body(structured_outputs={"json": "{not json"}), "structured_outputs.json", ""),
        (
            CHAT,
            chat_body(structured_outputs={"regex": "a", "choice": ["a"]}),
            "structured_outputs",
            "exactly one",
        ),
        (CHAT, chat_body(structured_outputs={}), "structured_outputs", "exactly one"),
        (
            CHAT,
            chat_body(response_format={"type": "json_object"}, structured_outputs={"regex": "a"}),
            "structured_outputs",
            "cannot be combined",
        ),
        (CHAT, chat_body(guided_json=SCHEMA), "guided_json", "not supported"),
        (COMPLETIONS, completion_body(structured_outputs={"choice": []}), "structured_outputs.choice", ""),
        (COMPLETIONS, completion_body(response_format=json_schema({"enum": 5})), "response_format", ""),
        (
            CHAT,
            chat_body(response_format=json_schema(TOO_LARGE)),
            "response_format",
            "bytes as JSON",
        ),
    ],
)
def test_refused_specs_are_400_naming_their_parameter(client, path, body, param, words):
    error = error_of(client.post(path, json=body), 400)
    assert error["param"] == param and words in error["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CHAT, chat_body(response_format={"type": "text"})),
        (CHAT, chat_body(response_format={"type": "json_object"})),
        (CHAT, chat_body(response_format=json_schema(SCHEMA, strict=True))),
        (CHAT, chat_body(structured_outputs={"json": '{"type": "array"}'})),
        (CHAT, chat_body(structured_outputs={"choice": ["yes", "no"]})),
        (COMPLETIONS, completion_body(structured_outputs={"regex": "[0-9]{3}"})),
        (COMPLETIONS, completion_body(structured_outputs={"grammar": 'root ::= "a" | "b"'})),
        (COMPLETIONS, completion_body(structured_outputs={"json_object": True})),
    ],
)
def test_accepted_specs_reach_admission(client, path, body):
    body["model"] = "ghost"
    error_of(client.post(path, json=body), 503)


def test_a_hostile_schema_is_answered_quickly(client):
    """Two references to the next level, 40 levels deep: 2**40 paths if the compiler expanded them."""
    defs = {
        f"d{i}": {
            "anyOf": [
                {"type": "array", "items": {"$ref": f"#/$defs/d{i + 1}"}},
                {"$ref": f"#/$defs/d{i + 1}"},
            ]
        }
        for i in range(40)
    }
    schema = {"$defs": {**defs, "d40": {"type": "integer"}}, "$ref": "#/$defs/d0"}
    started = time.monotonic()
    response = client.post(CHAT, json=chat_body(model="ghost", response_format=json_schema(schema)))
    assert time.monotonic() - started < 2.0
    assert response.status_code in (400, 503)
