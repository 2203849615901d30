"""Background responses through the SDK against the live stack, with more API processes than one:
created on one API process and read, continued and resumed on another, also after the first was
restarted; polled from queued to final, queue position, cancel, a deadline, and kill -9 of the worker
(requeued when it had sent nothing, else failed)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import openai
import pytest
import requests

from harness import crash, start_api, stop_process, wait_until
from harness.services import ApiServer
from tests.e2e.test_worker_crash import pid_running, started_jobs
from tests.settings import LONG_TOKENS, SPARE

LONG = dict(
    model=SPARE,
    input="Write a long story.",
    max_output_tokens=LONG_TOKENS,
    extra_body={"seed": 3, "ignore_eos": True},
)
SHORT = dict(model=SPARE, input="Say something.", max_output_tokens=40, extra_body={"seed": 5})


def client(server: ApiServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def spare(start_worker):
    worker = start_worker(SPARE)
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def api_b(base_env, tmp_path_factory) -> Iterator[ApiServer]:
    """A second API process on the same Redis (no load balancer in front of the two)."""
    server, log = start_api(base_env, tmp_path_factory.mktemp("api-b") / "api.log")
    yield server
    stop_process(server.proc)
    log.close()


def final(sdk: openai.OpenAI, response_id: str, timeout: float = 90) -> tuple[object, list[str]]:
    """Poll until the response is final; returns it and the statuses seen."""
    seen: list[str] = []

    def done() -> bool:
        response = sdk.responses.retrieve(response_id)
        if not seen or seen[-1] != response.status:
            seen.append(response.status)
        return response.status in ("completed", "incomplete", "failed", "cancelled")

    wait_until(done, timeout, f"response {response_id} to end", interval=0.1)
    return sdk.responses.retrieve(response_id), seen


def dumps(events) -> list[dict]:
    return [event.model_dump() for event in events]


def test_created_on_one_api_polled_and_continued_on_another(sdk, spare, api_b) -> None:
    other = client(api_b)
    foreground = sdk.responses.create(**SHORT)
    created = sdk.responses.create(background=True, **SHORT)
    assert created.status == "queued" and created.background
    response, seen = final(other, created.id)
    assert seen[-1] == "incomplete" and set(seen) <= {"queued", "in_progress", "incomplete"}
    assert response.output_text == foreground.output_text
    assert response.usage.output_tokens == 40
    # Continued on the other process, read back on the first.
    turn = other.responses.create(previous_response_id=created.id, **{**SHORT, "input": "More."})
    assert turn.usage.input_tokens > response.usage.input_tokens
    assert sdk.responses.retrieve(turn.id).output_text == turn.output_text
    assert [i.id for i in sdk.responses.input_items.list(turn.id).data] == [
        i.id for i in other.responses.input_items.list(turn.id).data
    ]


def test_a_background_stream_resumes_from_any_api_process(sdk, spare, api_b) -> None:
    stream = sdk.responses.create(background=True, stream=True, **{**LONG, "max_output_tokens": 300})
    head = []
    for event in stream:
        head.append(event)
        if len(head) == 12:
            break
    stream.close()  # the client leaves; the response goes on
    assert [e.type for e in head[:3]] == ["response.created", "response.queued", "response.in_progress"]
    response_id = head[0].response.id
    rest = list(client(api_b).responses.retrieve(response_id, stream=True, starting_after=11))
    assert rest[0].sequence_number == 12 and rest[-1].type == "response.incomplete"
    whole = list(sdk.responses.retrieve(response_id, stream=True))
    assert dumps(head + rest) == dumps(whole)
    assert [e.sequence_number for e in whole] == list(range(len(whole)))
    text = "".join(e.delta for e in whole if e.type == "response.output_text.delta")
    assert text == sdk.responses.retrieve(response_id).output_text


def test_a_stream_resumes_after_the_api_that_took_it_restarted(sdk, spare, base_env, tmp_path) -> None:
    api_c, log = start_api(base_env, tmp_path / "api-c.log")
    try:
        stream = client(api_c).responses.create(
            background=True, stream=True, **{**LONG, "max_output_tokens": 400}
        )
        head = [event for _, event in zip(range(6), stream, strict=False)]
        response_id = head[0].response.id
        crash(api_c.proc)  # no goodbye: the response must not need it
        rest = list(sdk.responses.retrieve(response_id, stream=True, starting_after=5))
        assert rest[0].sequence_number == 6 and rest[-1].type == "response.incomplete"
        log.close()
        api_c, log = start_api(base_env, tmp_path / "api-c2.log", port=api_c.port)
        again = list(client(api_c).responses.retrieve(response_id, stream=True, starting_after=5))
        assert dumps(again) == dumps(rest)
        assert client(api_c).responses.retrieve(response_id).status == "incomplete"
    finally:
        stop_process(api_c.proc)
        log.close()


def job_ids(responses) -> set[str]:
    return {response.id.removeprefix("resp_") for response in responses}


def test_queue_position_then_cancel_wherever_it_is(sdk, spare, api_b, redis_server) -> None:
    # The spare model has two slots: two long responses run, the third waits first in the queue.
    running = [sdk.responses.create(background=True, **LONG) for _ in range(2)]
    ids = job_ids(running)
    wait_until(lambda: ids <= set(started_jobs(redis_server)), 30, "both to start")
    queued = sdk.responses.create(background=True, **LONG)
    shown = requests.get(f"{api_b.url}/v1/responses/{queued.id}", timeout=10).json()
    assert shown["status"] == "queued" and shown["queue_position"] == 0
    assert shown["eta_seconds"] is None or shown["eta_seconds"] >= 0
    assert client(api_b).responses.retrieve(running[0].id).status == "in_progress"
    for response in [queued, *running]:
        cancelled = client(api_b).responses.cancel(response.id)
        assert cancelled.status == "cancelled"
        assert sdk.responses.retrieve(response.id).status == "cancelled"
    wait_until(lambda: not ids & set(started_jobs(redis_server)), 30, "the cancelled jobs to stop")
    with pytest.raises(openai.BadRequestError):
        sdk.responses.cancel(sdk.responses.create(**SHORT).id)  # only background ones


def test_a_background_response_ends_at_its_deadline(sdk, spare) -> None:
    started = time.monotonic()
    created = sdk.responses.create(background=True, extra_headers={"X-Request-Timeout": "2"}, **LONG)
    response, _ = final(sdk, created.id, timeout=30)
    assert response.status == "failed" and response.error is not None, response
    assert time.monotonic() - started < 2 + 10


def test_a_background_response_queued_past_its_deadline_ends_deadline_exceeded(
    sdk, spare, redis_server
) -> None:
    # Both slots of the spare model busy: the third waits in the queue until rq's ttl drops it.
    running = [sdk.responses.create(background=True, **LONG) for _ in range(2)]
    try:
        ids = job_ids(running)
        wait_until(lambda: ids <= set(started_jobs(redis_server)), 30, "both to start")
        waiting = sdk.responses.create(background=True, extra_headers={"X-Request-Timeout": "2"}, **SHORT)
        response, seen = final(sdk, waiting.id, timeout=30)
        assert seen[0] == "queued" and "in_progress" not in seen
        assert response.status == "failed" and response.error.code == "deadline_exceeded", response.error
    finally:
        for created in running:
            sdk.responses.cancel(created.id)


def kill_its_worker(redis_server, job_id: str, workers) -> None:
    """SIGKILL whichever of ``workers`` (all that serve the model) runs ``job_id``."""
    pid = pid_running(redis_server, job_id)
    victim = next(worker for worker in workers if worker.pid == pid)
    os.kill(victim.pid, signal.SIGKILL)
    victim.proc.wait()


# The module's spare worker serves the model too, so each kill test kills whichever worker runs its
# job; the spare one's teardown is a no-op once it is dead.


def test_a_worker_killed_before_it_sent_anything_gets_it_requeued(
    sdk, spare, start_worker, redis_server
) -> None:
    first, second = start_worker(SPARE), start_worker(SPARE)
    try:
        # Not streamed (no delta frames), and short enough that the other worker runs it whole.
        created = sdk.responses.create(background=True, **{**LONG, "max_output_tokens": 1800})
        job_id = created.id.removeprefix("resp_")
        wait_until(lambda: job_id in started_jobs(redis_server), 30, "the job to start")
        kill_its_worker(redis_server, job_id, [spare, first, second])
        response, seen = final(sdk, created.id, timeout=120)
        # The whole answer, from the other worker (an end of text or max_output_tokens ended it).
        assert response.status in ("completed", "incomplete"), response.error
        assert response.output_text and response.usage.output_tokens > 0
        assert not started_jobs(redis_server)
    finally:
        first.stop()
        second.stop()


def test_a_worker_killed_mid_stream_fails_it_with_a_clear_error(
    sdk, spare, start_worker, redis_server
) -> None:
    worker = start_worker(SPARE)
    try:
        stream = sdk.responses.create(background=True, stream=True, **LONG)
        head = [event for _, event in zip(range(8), stream, strict=False)]
        stream.close()
        response_id = head[0].response.id
        kill_its_worker(redis_server, response_id.removeprefix("resp_"), [spare, worker])
        response, _ = final(sdk, response_id, timeout=60)
        assert response.status == "failed"
        assert response.error.code == "worker_lost" and "died" in response.error.message
        events = list(sdk.responses.retrieve(response_id, stream=True, starting_after=7))
        assert events[-1].type == "response.failed"
    finally:
        worker.stop()
