"""Session fixtures: a private redis-server, the offline checkpoints, worker and API processes."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import (
    HEARTBEAT_TTL,
    REPO,
    ApiServer,
    RedisServer,
    WorkerProcess,
    free_port,
    start_api,
    stop_process,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
  - {{name: tiny-chat, aliases: [gpt-test], kind: chat, source: "{chat}", context_length: 256,
     max_batch_size: 4}}
  - {{name: tiny-chat-spare, kind: chat, source: "{chat}", context_length: 2048, max_batch_size: 2,
     max_queue: 3}}
  - {{name: ghost, kind: chat, source: "{chat}"}}
  - name: minilm
    aliases: [all-MiniLM-L6-v2, text-embedding-3-small]
    kind: embedding
    source: "{models_dir / "all-MiniLM-L6-v2"}"
    max_batch_size: 4
  - {{name: tiny-reranker, kind: rerank, source: "{models_dir / "tiny-reranker"}", max_batch_size: 4}}
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
    app.extensions["modelyard"].close()


@pytest.fixture
def client(app):
    return app.test_client()


def pytest_configure(config):
    # bin/ scripts started by the tests use the environment running the tests.
    os.environ.setdefault("MODELYARD_VENV", sys.prefix)
