"""Sampling ranges are defined once, on SamplingParams: the worker and the API refuse the same values."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from api.schemas.base import parse_body
from api.schemas.generation import ChatCompletionRequest
from shared.errors import InvalidRequest
from shared.jobs import BadMessage, SamplingParams, decode_job

#: (field, a value out of its range, the value at its edge).
RANGES = [
    ("temperature", 2.01, 2.0),
    ("temperature", -0.01, 0.0),
    ("top_p", 1.01, 1.0),
    ("min_p", -0.01, 0.0),
    ("repetition_penalty", 0.0, 100.0),
    ("presence_penalty", -2.01, -2.0),
    ("frequency_penalty", 2.01, 2.0),
    ("seed", 2**63, 2**63 - 1),
    ("max_tokens", 0, 1_000_000),
    ("stop_token_ids", [2**31], [2**31 - 1]),
    ("stop_token_ids", [1] * 65, [1] * 64),
    ("stop", ["s"] * 17, ["s"] * 16),
]


@pytest.mark.parametrize(("field", "bad", "edge"), RANGES)
def test_the_wire_and_the_api_refuse_the_same_values(field: str, bad: object, edge: object) -> None:
    assert getattr(SamplingParams.model_validate({field: edge}), field) == edge
    with pytest.raises(ValidationError) as wire:
        SamplingParams.model_validate({field: bad})
    with pytest.raises(InvalidRequest) as api:
        parse_body(
            ChatCompletionRequest, {"model": "m", "messages": [{"role": "user", "content": "hi"}], field: bad}
        )
    assert api.value.param.split(".")[0] == field
    if field != "stop":  # the API's stop may be one string too: its error names that member
        assert wire.value.errors()[0]["msg"] in api.value.message


def test_logit_bias_ranges_and_size() -> None:
    assert SamplingParams(logit_bias={7: 100.0, 8: -100.0}).logit_bias == {7: 100.0, 8: -100.0}
    for bias in ({7: 100.5}, {-1: 1.0}, {i: 1.0 for i in range(1025)}):
        with pytest.raises(ValidationError):
            SamplingParams(logit_bias=bias)


def test_a_queued_job_out_of_range_does_not_decode() -> None:
    job = {
        "type": "generate",
        "job_id": "j",
        "model": "m",
        "reply_to": "r",
        "deadline": time.time() + 60,
        "prompts": ["hi"],
        "sampling": {"temperature": 3.0},
    }
    with pytest.raises(BadMessage, match="temperature"):
        decode_job(job)
    assert decode_job({**job, "sampling": {"temperature": 2.0}}).sampling.temperature == 2.0
