"""kill -9 of a worker mid-job: jobs are requeued or ended with a retryable error, never left hanging."""

import json
import os
import signal
import threading
import time

import openai
import pytest
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from harness import wait_until
from shared import keys
from tests.settings import HEARTBEAT_TTL, LONG_TOKENS, SPARE

PROMPT = [{"role": "user", "content": "Write a long story."}]


def started_jobs(redis_server) -> list[str]:
    registry = StartedJobRegistry(
        keys.queue_name(SPARE), connection=redis_server.client(), serializer=JSONSerializer
    )
    return registry.get_job_ids(cleanup=False)


def pid_running(redis_server, job_id: str) -> int:
    """The pid of the worker process whose slot runs ``job_id`` (as the slot recorded it)."""
    client = redis_server.client()

    def worker_id() -> str | None:
        return keys.job_worker_id(Job.fetch(job_id, connection=client, serializer=JSONSerializer).meta)

    # rq lists a job as started a moment before the slot marks it started with its record.
    wait_until(worker_id, 5, "the job's worker record")
    return json.loads(client.get(keys.worker_key(worker_id())))["pid"]


def kill(worker) -> None:
    os.kill(worker.pid, signal.SIGKILL)
    worker.proc.wait()


def test_a_job_whose_worker_dies_before_streaming_is_requeued(start_worker, sdk, redis_server):
    first, second = start_worker(SPARE), start_worker(SPARE)
    try:
        outcome: dict = {}

        def call() -> None:
            try:
                outcome["response"] = sdk.chat.completions.create(
                    model=SPARE, messages=PROMPT, max_tokens=600, temperature=0
                )
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                outcome["error"] = exc

        caller = threading.Thread(target=call)
        caller.start()
        wait_until(lambda: started_jobs(redis_server), 10, "the job to start")
        job_id = started_jobs(redis_server)[0]
        victim = first if pid_running(redis_server, job_id) == first.pid else second
        kill(victim)
        caller.join(60)
        assert not caller.is_alive()
        assert "error" not in outcome, outcome.get("error")
        response = outcome["response"]
        assert response.usage.completion_tokens == 600  # the whole answer, from the other worker
        assert response.id == f"chatcmpl-{job_id}"
        # The answer goes out over pub/sub before rq files the job as finished.
        wait_until(lambda: not started_jobs(redis_server), 10, "rq to file the job as finished")
    finally:
        first.stop()
        second.stop()


def test_a_stream_whose_worker_dies_ends_with_a_retryable_error(start_worker, sdk, redis_server):
    worker = start_worker(SPARE)
    try:
        stream = sdk.chat.completions.create(
            model=SPARE, messages=PROMPT, max_tokens=LONG_TOKENS, temperature=0, stream=True
        )
        chunks = iter(stream)
        next(chunks)
        next(chunks)
        killed_at = time.monotonic()
        kill(worker)
        with pytest.raises(openai.APIError) as caught:
            for _ in chunks:
                pass
        assert "worker" in str(caught.value)
        assert time.monotonic() - killed_at < HEARTBEAT_TTL + 3
        wait_until(lambda: not started_jobs(redis_server), 5, "rq to record the job as failed")
    finally:
        worker.stop()


def test_jobs_running_and_queued_on_a_dead_worker_all_finish_on_a_new_one(start_worker, sdk, redis_server):
    doomed = start_worker(SPARE)  # two slots: two jobs run, the third waits in the queue
    results: list = []

    def call(i: int) -> None:
        try:
            results.append(sdk.chat.completions.create(model=SPARE, messages=PROMPT, max_tokens=400, seed=i))
        except Exception as exc:  # noqa: BLE001
            results.append(exc)

    callers = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for caller in callers:
        caller.start()
    wait_until(lambda: len(started_jobs(redis_server)) == 2, 10, "two jobs to start")
    kill(doomed)
    rescuer = start_worker(SPARE, wait=False)
    try:
        for caller in callers:
            caller.join(90)
        assert len(results) == 3
        assert all(not isinstance(r, Exception) for r in results), results
    finally:
        rescuer.stop()
