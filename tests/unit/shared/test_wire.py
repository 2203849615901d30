"""Wire types round-trip and refuse what is not theirs."""

import pytest

from shared.catalog import ModelCatalog, ModelKind, ModelsFileError
from shared.config import Settings
from shared.errors import DeadlineExceeded, InvalidRequest, RateLimited, error_for_status
from shared.events import ChoiceDelta, DeltaEvent, DoneEvent, ErrorEvent, decode_event, encode_event
from shared.jobs import BadMessage, Choice, GenerateResult, Usage, decode_job


def test_events_round_trip():
    delta = DeltaEvent(job_id="j", seq=3, deltas=[ChoiceDelta(index=1, text="é🙂", finish_reason="stop")])
    assert decode_event(encode_event(delta)) == delta
    done = DoneEvent(
        job_id="j",
        result=GenerateResult(
            choices=[Choice(index=0, text="x", finish_reason="length")],
            usage=Usage(prompt_tokens=2, completion_tokens=1, total_tokens=3),
        ),
    )
    assert decode_event(encode_event(done)) == done
    assert decode_event(encode_event(DoneEvent(job_id="j"))).result is None


def test_error_event_keeps_status_and_fields():
    error = InvalidRequest("too long", param="messages", code="context_length_exceeded")
    back = decode_event(encode_event(ErrorEvent.from_error("j", error))).to_error()
    assert isinstance(back, InvalidRequest)
    assert (back.status, back.param, back.code, back.message) == (
        400,
        "messages",
        "context_length_exceeded",
        "too long",
    )
    assert isinstance(error_for_status(504, "late"), DeadlineExceeded)
    assert error_for_status(429, "full", retry_after=3).retry_after == 3
    assert isinstance(error_for_status(429, "full"), RateLimited)


def test_bad_messages_are_refused():
    with pytest.raises(BadMessage):
        decode_event(b"{not json")
    with pytest.raises(BadMessage):
        decode_job({"type": "embed", "job_id": "a"})
    with pytest.raises(BadMessage):
        decode_job(
            {"type": "shell", "job_id": "a", "model": "m", "reply_to": "c", "deadline": 1, "cmd": "rm"}
        )


def test_settings_from_env():
    settings = Settings.from_env(
        {"REDIS_URL": "redis://h:1/2", "MODELYARD_API_KEYS": " a, b ,", "MODELYARD_REQUEST_TIMEOUT": "7.5"}
    )
    assert settings.redis_url == "redis://h:1/2"
    assert settings.api_keys == ("a", "b")
    assert settings.request_timeout == 7.5
    assert (
        Settings.from_env({"MODELYARD_REDIS_URL": "redis://x", "REDIS_URL": "redis://y"}).redis_url
        == "redis://x"
    )


def test_models_file(tmp_path):
    (tmp_path / "m").mkdir()
    path = tmp_path / "models.yaml"
    path.write_text(
        "models:\n  - {name: a, aliases: [b], kind: chat, source: m}\n"
        "  - {name: e, kind: embedding, source: org/hub-id}\n"
    )
    catalog = ModelCatalog.load(path)
    assert catalog.resolve("b").name == "a"
    assert catalog.resolve("a").source == str((tmp_path / "m").resolve())
    assert catalog.resolve("e").source == "org/hub-id"
    assert catalog.resolve("e").kind is ModelKind.EMBEDDING
    assert catalog.resolve("zzz") is None


@pytest.mark.parametrize(
    "text",
    [
        "models: []",
        "models:\n  - {name: a, kind: nope, source: x}",
        "models:\n  - {name: a, kind: chat, source: x}\n  - {name: b, aliases: [a], kind: chat, source: x}",
        "{{{",
    ],
)
def test_bad_models_files(tmp_path, text):
    path = tmp_path / "models.yaml"
    path.write_text(text)
    with pytest.raises(ModelsFileError):
        ModelCatalog.load(path)


def test_logprobs_and_new_job_fields_round_trip():
    from shared.jobs import SamplingParams, TokenLogprob, TopLogprob

    entries = [
        TokenLogprob(id=5, token="He", bytes=[72, 101]),  # an echoed prompt's first token: no logprob
        TokenLogprob(
            id=9,
            token="\ufffd",
            bytes=[240],
            logprob=-0.5,
            top=[TopLogprob(id=9, token="\ufffd", bytes=[240], logprob=-0.5)],
        ),
    ]
    delta = DeltaEvent(job_id="j", seq=0, deltas=[ChoiceDelta(index=0, text="", logprobs=entries)])
    assert decode_event(encode_event(delta)) == delta
    sampling = SamplingParams(logit_bias={12: -100.0}, stop_token_ids=[3], top_k=4, logprobs=2)
    job = decode_job(
        {
            "type": "generate",
            "job_id": "a",
            "model": "m",
            "reply_to": "c",
            "deadline": 1,
            "prompts": ["text", [1, 2, 3]],
            "echo": True,
            "sampling": sampling.model_dump(mode="json"),  # JSON keys: the token ids become strings
        }
    )
    assert job.sampling == sampling and job.prompts == ["text", [1, 2, 3]]
