"""Who runs a job is recorded, not parsed out of a name (a worker on a host with dots in its name
keeps its jobs), and deployments with different key prefixes share one Redis without taking each
other's jobs."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from harness import REPO, WorkerProcess, live_models, start_api, stop_process, wait_until
from shared import keys
from tests.settings import (
    HEARTBEAT_TTL,
    SPARE,  # noqa: E402
)

PROMPT = [{"role": "user", "content": "Write a long story."}]
DOTTED_HOST = "node1.cluster.local"


def can_unshare_uts() -> str | None:
    """Why a UTS namespace (a host name of the test's own) cannot be made here; None if it can."""
    try:
        done = subprocess.run(["unshare", "--uts", "hostname", DOTTED_HOST], capture_output=True, timeout=10)
    except FileNotFoundError:
        return "unshare (util-linux) is not installed"
    if done.returncode != 0:
        return f"unshare --uts is not permitted here (needs root): {done.stderr.decode().strip()}"
    return None


def job_of(redis_server, response_id: str) -> Job:
    """The rq job behind a response (its id is the job's, after the OpenAI prefix)."""
    job_id = response_id.removeprefix("chatcmpl-")
    return Job.fetch(job_id, connection=redis_server.client(), serializer=JSONSerializer)


def running_seconds(jobs: list[Job]) -> float:
    """Seconds during which at least one of ``jobs`` was started and not yet ended."""
    total, covered_to = 0.0, None
    for job in sorted(jobs, key=lambda j: j.started_at):
        start, end = job.started_at.timestamp(), job.ended_at.timestamp()
        if covered_to is not None:
            start = max(start, covered_to)
        total += max(0.0, end - start)
        covered_to = end if covered_to is None else max(covered_to, end)
    return total


def chat(url: str, max_tokens: int, seed: int = 0) -> requests.Response:
    body = {"model": SPARE, "messages": PROMPT, "max_tokens": max_tokens, "seed": seed}
    return requests.post(url + "/v1/chat/completions", json=body, timeout=120)


def test_a_worker_on_a_host_with_dots_in_its_name_keeps_its_jobs(
    base_env, api_server, redis_server, tmp_path
):
    why_not = can_unshare_uts()
    if why_not:
        pytest.skip(why_not)
    # The worker's own UTS namespace: socket.gethostname() there is node1.cluster.local.
    program = (
        "unshare",
        "--uts",
        "sh",
        "-c",
        f'hostname {DOTTED_HOST} && exec "$0" "$@"',
        str(REPO / "bin" / "worker"),
    )
    worker = WorkerProcess(base_env, [SPARE], tmp_path / "dotted.log", program=program)
    try:
        status = worker.wait_ready(redis_server).status(redis_server)
        assert status["host"] == DOTTED_HOST and status["id"].startswith(DOTTED_HOST + "-"), status
        assert live_models(api_server.url).get(SPARE) == 1  # this worker alone serves the model

        # One long stream (a janitor that judged this worker dead would end it with worker_lost
        # after a sweep) and, meanwhile, short requests one after another on the other slot.
        began = time.monotonic()
        stream = requests.post(
            api_server.url + "/v1/chat/completions",
            json={"model": SPARE, "messages": PROMPT, "max_tokens": 1800, "temperature": 0, "stream": True},
            stream=True,
            timeout=120,
        )
        short: list[requests.Response] = []
        streamed: list[str] = []
        reader = threading.Thread(
            target=lambda: streamed.extend(line for line in stream.iter_lines(decode_unicode=True) if line)
        )
        reader.start()
        while reader.is_alive() or time.monotonic() - began < 4 * HEARTBEAT_TTL:
            short.append(chat(api_server.url, max_tokens=40, seed=len(short)))
        reader.join(60)
        elapsed = time.monotonic() - began

        # Several janitor sweeps (one a second) and heartbeat TTLs passed while jobs ran.
        assert elapsed >= 4 * HEARTBEAT_TTL
        assert stream.status_code == 200 and streamed[-1] == "data: [DONE]", streamed[-3:]
        chunks = [json.loads(line.removeprefix("data: ")) for line in streamed if line.startswith("data: {")]
        assert not [c for c in chunks if "error" in c], [c for c in chunks if "error" in c]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert all(r.status_code == 200 for r in short), [r.text for r in short if r.status_code != 200]
        jobs = [job_of(redis_server, chunks[0]["id"])] + [job_of(redis_server, r.json()["id"]) for r in short]
        # Some job of the worker was started through most of those sweeps.
        assert running_seconds(jobs) >= elapsed / 2, (running_seconds(jobs), elapsed)
        for job in jobs:
            assert job.get_status() == JobStatus.FINISHED
            assert keys.job_worker_id(job.meta) == status["id"]  # recorded by the slot, not parsed
            assert job.worker_name.startswith(DOTTED_HOST + "-")
        # None was failed as lost and run again: each job ran once.
        done = re.findall(rf"job (\w+) \({SPARE}\) done", worker.log())
        assert sorted(done) == sorted(job.id for job in jobs)
    finally:
        worker.stop()


def test_two_deployments_with_different_prefixes_share_one_redis(
    base_env, api_server, start_worker, redis_server, tmp_path
):
    """Deployment A (the session's API, prefix ``modelyard``) and deployment B (its own API and
    worker, prefix ``teamb``) serve the same model name on the same Redis: each API admits and
    queues for its own workers only, and each worker takes its own deployment's jobs only."""
    env_b = {**base_env, "MODELYARD_KEY_PREFIX": "teamb"}
    worker_a = start_worker(SPARE)
    worker_b = WorkerProcess(env_b, [SPARE], tmp_path / "worker-b.log")
    api_b = None
    try:
        api_b, api_b_log = start_api(env_b, tmp_path / "api-b.log")

        def b_ready() -> bool:
            worker_b.check_running()
            return live_models(api_b.url).get(SPARE) == 1

        wait_until(b_ready, 120, "deployment B's worker", interval=0.2)
        assert live_models(api_server.url).get(SPARE) == 1  # A counts its own worker, not B's
        worker_a_id = worker_a.status(redis_server)["id"]
        client = redis_server.client()

        # Both deployments at once, each more requests than its worker has slots (two), and no more
        # than its queue admits at once (max_queue 3).
        calls = [(url, i) for i in range(3) for url in (api_server.url, api_b.url)]
        with ThreadPoolExecutor(len(calls)) as pool:
            answers = list(
                pool.map(lambda call: (call[0], chat(call[0], max_tokens=30, seed=call[1])), calls)
            )
        assert all(r.status_code == 200 for _, r in answers), [
            r.text for _, r in answers if r.status_code != 200
        ]

        b_workers = set()
        for url, response in answers:
            job = job_of(redis_server, response.json()["id"])
            worker_id = keys.job_worker_id(job.meta)
            if url == api_server.url:
                assert job.origin == f"modelyard:{SPARE}"
                assert worker_id == worker_a_id
            else:
                assert job.origin == f"teamb:{SPARE}"
                b_workers.add(worker_id)
        # Every job of B ran on B's one worker, whose heartbeat lives under B's prefix only.
        (b_worker,) = b_workers
        assert json.loads(client.get(f"teamb:worker:{b_worker}"))["pid"] == worker_b.pid
        assert client.get(keys.worker_key(b_worker)) is None
        # An API does not show the other deployment's job.
        b_job = next(r.json()["id"] for url, r in answers if url == api_b.url)
        assert requests.get(f"{api_b.url}/v1/jobs/{b_job}", timeout=5).status_code == 200
        assert requests.get(f"{api_server.url}/v1/jobs/{b_job}", timeout=5).status_code == 404

        # Without B's worker, B has no worker for the model, though A's still serves it.
        worker_b.stop()
        wait_until(lambda: live_models(api_b.url).get(SPARE) == 0, 10, "B to see its worker gone")
        refused = chat(api_b.url, max_tokens=5)
        assert refused.status_code == 503, refused.text
        assert chat(api_server.url, max_tokens=5).status_code == 200
    finally:
        worker_a.stop()  # later tests count the model's workers
        worker_b.stop()
        if api_b is not None:
            stop_process(api_b.proc)
            api_b_log.close()
