"""modelyard's own processes for tests and benchmarks: workers and the API, and what they report."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import requests

from harness.processes import REPO, LoggedProcess, free_port, stop_process, wait_until
from harness.redis_server import RedisDatabase, RedisServer
from shared import keys

#: ``bin/worker``: what a worker process runs unless told otherwise.
WORKER_PROGRAM = (str(REPO / "bin" / "worker"),)


def live_workers(redis: RedisServer | RedisDatabase, model: str) -> int:
    """Workers of ``model`` whose registration has not expired, read from Redis."""
    return int(redis.client().zcount(keys.model_workers_key(model), time.time(), "+inf"))


def live_models(api_url: str) -> dict[str, int]:
    """Live workers per model as the API's ``/health`` reports them; empty while it does not answer."""
    try:
        models = requests.get(api_url + "/health", timeout=2).json()["models"]
        return {name: int(count or 0) for name, count in models.items()}
    except (requests.RequestException, ValueError, KeyError, TypeError, AttributeError):
        return {}


def started_jobs(redis: RedisServer | RedisDatabase, model: str) -> list[str]:
    """Ids of ``model``'s jobs in rq's started registries, every queue of the model's included
    (``rq:wip:<queue>``; a model may have several queues, named ``<queue>`` and ``<queue>:...``)."""
    client = redis.client()
    name = keys.queue_name(model)
    registries = [f"rq:wip:{name}", *client.scan_iter(match=f"rq:wip:{name}:*")]
    entries = [entry for key in registries for entry in client.zrange(key, 0, -1)]
    # Each entry is ``<job id>:<execution id>``.
    return [(e.decode() if isinstance(e, bytes) else e).split(":")[0] for e in entries]


class WorkerProcess(LoggedProcess):
    """A worker process serving ``models``: ``program`` (``bin/worker`` by default) with the models
    as its arguments; its log goes to a file, shown when it dies."""

    def __init__(
        self,
        env: Mapping[str, str],
        models: Sequence[str],
        log_path: Path,
        program: Sequence[str] = WORKER_PROGRAM,
    ) -> None:
        self.models = list(models)
        super().__init__([*program, *self.models], env, log_path)

    def wait_ready(self, redis: RedisServer | RedisDatabase, timeout: float = 120) -> WorkerProcess:
        """Wait until this process beats (its models are loaded); raises if it exits first."""

        def ready() -> bool:
            self.check_running()
            return self.status(redis) is not None

        wait_until(ready, timeout, f"worker for {self.models}", interval=0.2)
        return self

    def status(self, redis: RedisServer | RedisDatabase) -> dict | None:
        """This process's heartbeat status, once it beats (its models are loaded)."""
        client = redis.client()
        for key in client.scan_iter(match=keys.worker_key("*")):
            status = json.loads(client.get(key) or "{}")
            if status.get("pid") == self.pid:
                return status
        return None


@dataclass
class ApiServer:
    url: str
    proc: subprocess.Popen
    port: int


def start_api(
    env: Mapping[str, str], log_path: Path, *, port: int | None = None, timeout: float = 60
) -> tuple[ApiServer, IO[bytes]]:
    """``bin/api`` on ``port`` (a free one by default), once ``/health`` answers 200; the caller stops
    ``server.proc`` and closes the returned log file."""
    port = port or free_port()
    log = open(log_path, "wb")  # noqa: SIM115 - closed by the caller
    proc = subprocess.Popen(
        [str(REPO / "bin" / "api")],
        env={**env, "MODELYARD_PORT": str(port)},
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = ApiServer(url=f"http://127.0.0.1:{port}", proc=proc, port=port)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"api exited:\n{log_path.read_text()}")
        try:
            return requests.get(server.url + "/health", timeout=1).status_code == 200
        except (requests.ConnectionError, requests.Timeout):  # gunicorn accepts before its app loaded
            return False

    try:
        wait_until(healthy, timeout, "the API", interval=0.2)
    except BaseException:
        stop_process(proc)  # nobody else would: the caller never gets the server
        log.close()
        raise
    return server, log
