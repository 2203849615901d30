"""Workers on other hosts: network namespaces joined by veth links, each host with its own address
and a dotted hostname, its worker talking to the Redis on the first host (this one). Jobs spread
over the hosts; a host cut off (``harness.netns.Host.cut``: its link down, its connections hanging
as a pulled cable leaves them) is given up within the heartbeat TTL, its jobs run elsewhere or end
with a retryable error, and when its link comes back its worker rejoins, as the same process,
without speaking for the jobs that ran elsewhere (docs/scaling.md)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
import requests
from rq.job import Job
from rq.serializers import JSONSerializer

from harness import (
    REPO,
    ApiServer,
    RedisServer,
    WorkerProcess,
    free_port,
    live_models,
    start_api,
    started_jobs,
    stop_process,
    wait_until,
)
from harness.netns import Network, why_not
from shared import keys
from tests.settings import HEARTBEAT_TTL

MODEL = "tiny-chat"
HOSTS = 3
#: tiny-chat's max_batch_size in the test models file: a worker's slots.
SLOTS = 4

pytestmark = pytest.mark.skipif(bool(why_not()), reason=f"no network namespaces here: {why_not()}")


@dataclass
class Fleet:
    network: Network
    redis: RedisServer
    api: ApiServer
    workers: dict[str, WorkerProcess]  # by hostname
    ids: dict[str, str]  # worker id -> hostname

    def host_of(self, job_id: str) -> str | None:
        job = Job.fetch(job_id, connection=self.redis.client(), serializer=JSONSerializer)
        return self.ids.get(keys.job_worker_id(job.meta) or "")

    def runs_on(self, job_id: str, hostname: str) -> bool:
        """Whether rq records the job as started on ``hostname``'s worker."""
        status = self.redis.client().hget(keys.RQ_JOB_PREFIX + job_id, "status")
        return status == b"started" and self.host_of(job_id) == hostname

    def done_on(self) -> dict[str, list[str]]:
        """Job ids each host's worker logged as done."""
        return {h: re.findall(rf"job (\w+) \({MODEL}\) done", w.log()) for h, w in self.workers.items()}


@pytest.fixture(scope="module")
def fleet(base_env, tmp_path_factory) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("multihost")
    with Network(hosts=HOSTS) as network:
        # Beyond loopback, Redis wants a password (its protected mode refuses others without one).
        redis = RedisServer(
            port=free_port(),
            workdir=work,
            host=network.first_host,
            args=("--requirepass", "fleet-pw"),
            userinfo=":fleet-pw",
        )
        redis.start()
        env = {**base_env, "MODELYARD_REDIS_URL": redis.url}
        workers: dict[str, WorkerProcess] = {}
        api = log = None
        try:
            for host in network.members:
                program = tuple(host.command([str(REPO / "bin" / "worker")]))
                workers[host.hostname] = WorkerProcess(
                    env, [MODEL], work / f"{host.hostname}.log", program=program
                )
            ids = {}
            for hostname, worker in workers.items():
                status = worker.wait_ready(redis, timeout=180).status(redis)
                assert status["host"] == hostname, status
                ids[status["id"]] = hostname
            api, log = start_api(env, work / "api.log")
            yield Fleet(network, redis, api, workers, ids)
        finally:
            if api is not None:
                stop_process(api.proc)
                log.close()
            for worker in workers.values():
                worker.stop(timeout=10)
            redis.stop()


def chat(api_url: str, max_tokens: int, seed: int, stream: bool = False) -> requests.Response:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Tell me about the sea, part {seed}."}],
        "max_tokens": max_tokens,
        "seed": seed,
        "stream": stream,
    }
    return requests.post(api_url + "/v1/chat/completions", json=body, timeout=60, stream=stream)


def job_id(response: requests.Response) -> str:
    return response.json()["id"].removeprefix("chatcmpl-")


def test_jobs_spread_over_the_hosts(fleet):
    assert live_models(fleet.api.url).get(MODEL) == HOSTS
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda i: chat(fleet.api.url, 24, i), range(36)))
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers if r.status_code != 200]
    spread = Counter(fleet.host_of(job_id(r)) for r in answers)
    print(f"jobs per host: {dict(spread)}")
    assert set(spread) == set(fleet.workers), spread
    assert min(spread.values()) >= 4, spread


@dataclass
class Answer:
    stream: bool
    status: int
    job_id: str | None = None
    error: str | None = None  # the error code, for an error (HTTP or inside the stream)
    seconds: float = 0.0


def ask(api_url: str, seed: int, stream: bool) -> Answer:
    """A long request (64 tokens, EOS ignored), streamed or not, and how it ended."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Tell me about the cut, part {seed}."}],
        "max_tokens": 64,
        "ignore_eos": True,
        "seed": seed,
        "stream": stream,
    }
    started = time.monotonic()
    with requests.post(api_url + "/v1/chat/completions", json=body, timeout=90, stream=stream) as r:
        answer = Answer(stream, r.status_code)
        if r.status_code != 200:
            answer.error = r.json()["error"]["code"]
        elif not stream:
            answer.job_id = r.json()["id"].removeprefix("chatcmpl-")
        else:
            for line in r.iter_lines():
                data = line.decode().removeprefix("data: ")
                if not data or data == "[DONE]" or not data.startswith("{"):
                    continue
                chunk = json.loads(data)
                if "error" in chunk:
                    answer.error = chunk["error"]["code"]
                else:
                    answer.job_id = chunk["id"].removeprefix("chatcmpl-")
    answer.seconds = time.monotonic() - started
    return answer


def test_a_host_cut_off_is_given_up_and_rejoins_without_a_restart(fleet):
    host = fleet.network.members[0]
    worker = fleet.workers[host.hostname]
    before = worker.status(fleet.redis)
    answers: list[Answer] = []
    stop = threading.Event()

    def client(n: int) -> None:
        seed = n * 1000
        while not stop.is_set():
            seed += 1
            answers.append(ask(fleet.api.url, seed, stream=n % 2 == 1))

    clients = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in clients:
        thread.start()
    try:
        # Cut it while it runs jobs: they must run elsewhere (or end with a retryable error).
        wait_until(lambda: (worker.status(fleet.redis) or {}).get("running"), 60, "jobs on the host")
        host.cut()
        cut_at = time.monotonic()
        # What it had started, as Redis saw it when the cable went (the host changes nothing since).
        running = [job for job in started_jobs(fleet.redis, MODEL) if fleet.runs_on(job, host.hostname)]
        wait_until(
            lambda: live_models(fleet.api.url).get(MODEL) == HOSTS - 1,
            HEARTBEAT_TTL + 5,
            "the cut host given up",
        )
        given_up_s = time.monotonic() - cut_at
        # Its jobs are given up (failed, then requeued or answered 503) while traffic goes on.
        wait_until(
            lambda: not any(fleet.runs_on(job, host.hostname) for job in running), 30, "its jobs given up"
        )
        done_at_heal = len(fleet.done_on()[host.hostname])
        host.heal()
        healed_at = time.monotonic()
        wait_until(lambda: live_models(fleet.api.url).get(MODEL) == HOSTS, 60, "the healed host back")
        rejoined_s = time.monotonic() - healed_at
        # Back in the fleet for real: it runs new jobs again.
        wait_until(
            lambda: len(fleet.done_on()[host.hostname]) > done_at_heal, 60, "a job done on the healed host"
        )
    finally:
        host.heal()
        stop.set()
        for thread in clients:
            thread.join(timeout=120)
    print(
        f"given up {given_up_s:.1f}s after the cut, back {rejoined_s:.1f}s after the heal; "
        f"{len(answers)} requests, {sum(1 for a in answers if a.error)} worker_lost; "
        f"{len(running)} jobs running on the host at the cut"
    )
    after = worker.status(fleet.redis)
    assert (after["id"], after["pid"]) == (before["id"], before["pid"]), "the worker was restarted"
    worker.check_running()

    # Every request ended, well before its timeout: done, or a clear retryable error.
    failed = [a for a in answers if a.status != 200 or a.error]
    assert all(a.error == "worker_lost" for a in failed), failed
    assert len(failed) <= len(running), (failed, running)
    assert max(a.seconds for a in answers) < 60, max(a.seconds for a in answers)

    # No job was done twice: the host came back and did not finish, for its clients, the jobs
    # that were given up and ran elsewhere ("given up" in its log); nothing is left started.
    done = Counter(job for jobs in fleet.done_on().values() for job in jobs)
    assert all(count == 1 for count in done.values()), [job for job, count in done.items() if count > 1]
    answered = {a.job_id for a in answers if a.status == 200 and not a.error}
    client_redis = fleet.redis.client()
    for job in running:
        if job in answered:
            assert fleet.host_of(job) not in (None, host.hostname), job
        status = client_redis.hget(keys.RQ_JOB_PREFIX + job, "status")
        assert status in (b"finished", b"failed"), (job, status)
    assert started_jobs(fleet.redis, MODEL) == []
