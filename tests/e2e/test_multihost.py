"""Workers on other hosts: network namespaces joined by veth links, each host with its own address
and a dotted hostname, its worker talking to the Redis on the first host (this one). Jobs spread
over the hosts. ``harness.netns.Host.cut``/``heal`` pull and restore a host's link; the cut-off test
is not in the suite yet (see the module's history and docs/scaling.md)."""

from __future__ import annotations

import re
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
    stop_process,
)
from harness.netns import Network, why_not
from shared import keys

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
