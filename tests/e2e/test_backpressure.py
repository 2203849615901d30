"""A full queue answers 429 with Retry-After; jobs can be inspected and cancelled through /v1/jobs."""

import threading
import time

import openai
import requests
from rq import Queue
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from tests.support import wait_until

SPARE = "tiny-chat-spare"  # two slots and max_queue 3 in the test models file
LONG = {"model": SPARE, "messages": [{"role": "user", "content": "go"}], "max_tokens": 1800, "temperature": 0}


def test_full_queue_429_then_inspect_and_cancel_every_job(start_worker, sdk, api_server, redis_server):
    worker = start_worker(SPARE)
    redis = redis_server.client()
    queue = Queue(SPARE, connection=redis, serializer=JSONSerializer)
    started = StartedJobRegistry(SPARE, connection=redis, serializer=JSONSerializer)
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
    started = StartedJobRegistry(SPARE, connection=redis_server.client(), serializer=JSONSerializer)
    busy = [
        threading.Thread(
            target=requests.post,
            args=(api_server.url + "/v1/chat/completions",),
            kwargs={"json": LONG, "timeout": 120},
        )
        for _ in range(2)
    ]
    try:
        for thread in busy:
            thread.start()
        wait_until(lambda: len(started.get_job_ids(cleanup=False)) == 2, 10, "both slots to be busy")
        body = {**LONG, "max_tokens": 5, "stream": True}
        with requests.post(api_server.url + "/v1/chat/completions", json=body, stream=True, timeout=60) as r:
            assert r.status_code == 200
            lines = r.iter_lines(decode_unicode=True)
            comments = []
            for line in lines:
                if line.startswith(": queued"):
                    comments.append(line)
                    if len(comments) == 2:
                        break
            assert comments == [": queued position=0"] * 2
            for job_id in started.get_job_ids(cleanup=False):  # free a slot: the stream starts
                requests.delete(f"{api_server.url}/v1/jobs/{job_id}", timeout=5)
            rest = [line for line in lines if line.startswith("data:")]
            assert rest[-1] == "data: [DONE]" and any('"content"' in line for line in rest)
    finally:
        for thread in busy:
            thread.join(30)
        worker.stop()
