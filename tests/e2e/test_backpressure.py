"""A full queue answers 429 with Retry-After; jobs can be inspected and cancelled through /v1/jobs."""

import json
import threading
import time

import openai
import requests
from rq import Queue
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from harness import wait_until
from shared import keys
from tests.settings import LONG_TOKENS, SPARE

LONG = {
    "model": SPARE,
    "messages": [{"role": "user", "content": "go"}],
    "max_tokens": LONG_TOKENS,
    "temperature": 0,
}


def test_full_queue_429_then_inspect_and_cancel_every_job(start_worker, sdk, api_server, redis_server):
    worker = start_worker(SPARE)
    redis = redis_server.client()
    queue = Queue(keys.queue_name(SPARE), connection=redis, serializer=JSONSerializer)
    started = StartedJobRegistry(keys.queue_name(SPARE), connection=redis, serializer=JSONSerializer)
    answers: list[requests.Response] = []

    def call() -> None:
        answers.append(requests.post(api_server.url + "/v1/chat/completions", json=LONG, timeout=120))

    callers = [threading.Thread(target=call) for _ in range(5)]
    try:
        for caller in callers[:2]:
            caller.start()
        wait_until(lambda: len(started.get_job_ids(cleanup=False)) == 2, 10, "both slots to be busy")
        for caller in callers[2:]:
            caller.start()
        wait_until(lambda: queue.count == 3, 10, "three queued jobs")

        with openai.OpenAI(base_url=api_server.url + "/v1", api_key="x", max_retries=0) as client:
            try:
                client.chat.completions.create(**LONG)
                raise AssertionError("a request past the queue limit was accepted")
            except openai.RateLimitError as full:
                assert full.code == "queue_full"
                assert 1 <= int(full.response.headers["Retry-After"]) <= 300
        # Admission shares the enqueue's transaction; a refused job is taken back out of the queue.
        burst = [
            requests.post(api_server.url + "/v1/chat/completions", json=LONG, timeout=30).status_code
            for _ in range(3)
        ]
        assert burst == [429, 429, 429]
        assert queue.count == 3

        queued = queue.get_job_ids()
        for position, job_id in enumerate(queued):
            job = requests.get(f"{api_server.url}/v1/jobs/{job_id}", timeout=5).json()
            assert (job["status"], job["queue_position"], job["model"]) == ("queued", position, SPARE)
        running = started.get_job_ids(cleanup=False)
        assert requests.get(f"{api_server.url}/v1/jobs/chatcmpl-{running[0]}", timeout=5).json()[
            "status"
        ] == ("started")

        cancelled_at = time.monotonic()
        for job_id in queued + running:
            assert requests.delete(f"{api_server.url}/v1/jobs/{job_id}", timeout=5).status_code == 200
        for caller in callers:
            caller.join(30)
        assert time.monotonic() - cancelled_at < 10
        assert len(answers) == 5
        for answer in answers:
            assert answer.status_code == 499, answer.text
            assert answer.json()["error"]["code"] == "cancelled"
        # The worker answers the client first, then rq records the job as stopped.
        wait_until(
            lambda: (
                requests.get(f"{api_server.url}/v1/jobs/{running[0]}", timeout=5).json()["status"]
                == "stopped"
            ),
            5,
            "rq to record the stopped job",
        )
        assert requests.get(f"{api_server.url}/v1/jobs/{queued[0]}", timeout=5).json()["status"] == "canceled"
        assert requests.delete(f"{api_server.url}/v1/jobs/no-such-job", timeout=5).status_code == 404
    finally:
        worker.stop()


def test_a_queued_stream_reports_its_position_until_the_first_token(start_worker, api_server, redis_server):
    worker = start_worker(SPARE)
    conn = redis_server.client()
    started = StartedJobRegistry(keys.queue_name(SPARE), connection=conn, serializer=JSONSerializer)
    queue = Queue(keys.queue_name(SPARE), connection=conn, serializer=JSONSerializer)
    # Both slots busy and one more long job queued ahead: the stream waits for at least one whole long
    # job, more than the two keep-alive ticks it is asserted to report.
    busy = [
        threading.Thread(
            target=requests.post,
            args=(api_server.url + "/v1/chat/completions",),
            kwargs={"json": LONG, "timeout": 120},
        )
        for _ in range(3)
    ]
    try:
        for thread in busy:
            thread.start()
        wait_until(
            lambda: len(started.get_job_ids(cleanup=False)) == 2 and queue.count == 1,
            10,
            "both slots busy and one job queued",
        )
        body = {**LONG, "max_tokens": 5, "stream": True}
        with requests.post(api_server.url + "/v1/chat/completions", json=body, stream=True, timeout=60) as r:
            assert r.status_code == 200
            lines = r.iter_lines(decode_unicode=True)
            positions, opening = [], []
            for line in lines:
                if line.startswith("data:"):
                    opening.append(json.loads(line.removeprefix("data:")))
                elif line.startswith(": queued position="):
                    positions.append(int(line.removeprefix(": queued position=")))
                    if len(positions) == 2:
                        break
            assert set(positions) <= {0, 1} and positions == sorted(positions, reverse=True)
            ours = opening[0]["id"].removeprefix("chatcmpl-")
            ahead = {*queue.get_job_ids(), *started.get_job_ids(cleanup=False)} - {ours}
            for job_id in ahead:  # free the slots: the stream starts
                requests.delete(f"{api_server.url}/v1/jobs/{job_id}", timeout=5)
            rest = [line for line in lines if line.startswith("data:")]
            assert rest[-1] == "data: [DONE]" and any('"content"' in line for line in rest)
    finally:
        for thread in busy:
            thread.join(30)
        worker.stop()
