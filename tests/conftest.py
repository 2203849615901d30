"""Session fixtures: a private redis-server, the offline checkpoints, worker and API processes.

Redis databases: the session's processes (the fleet, the API, and every worker or API a test starts
beside them, which must share their queues and heartbeats) use database 0, which is never flushed
while they run: a test there finds the others' jobs and keys, and looks only at its own (its job
ids, its worker's pid). Each test module also gets a database of its own, ``redis_db``, empty when
the module starts and flushed when it ends, as rq's own tests do: in-process apps (``app``,
``client``) and what a test writes to Redis directly use it. Pub/sub channels are per server, not
per database; every channel name the project uses is unique to its API process or job.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask

# One fair-share lane per band for the suite, set before anything imports shared.priority: the
# tests look at a model's jobs by queue name (lane 0). tests/e2e/test_fair_share.py runs a stack of
# its own with the default lanes.
os.environ.setdefault("MODELYARD_PRIORITY_LANES", "1")

from harness import (  # noqa: E402
    REPO,
    ApiServer,
    RedisDatabase,
    RedisServer,
    WorkerProcess,
    free_port,
    start_api,
    stop_process,
)
from tests.settings import HEARTBEAT_TTL, SPARE, SPARE_CONTEXT_LENGTH  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(port=free_port(), workdir=tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


#: Databases handed to test modules in turn (redis-server has 16; 0 is the session's). A module's
#: database is flushed before it is handed out, so reuse after 15 modules starts empty too.
_MODULE_DATABASES = itertools.cycle(range(1, 16))


@pytest.fixture(scope="module")
def redis_db(redis_server: RedisServer) -> Iterator[RedisDatabase]:
    """This module's own Redis database: empty when the module starts, flushed when it ends."""
    database = redis_server.database(next(_MODULE_DATABASES))
    database.flush()
    yield database
    database.flush()


@pytest.fixture(scope="session")
def models_dir() -> Path:
    from bootstrap.checkpoints import make_default_models

    path = REPO / "models"
    make_default_models(path)
    return path


@pytest.fixture(scope="session")
def models_file(tmp_path_factory, models_dir: Path) -> Path:
    """Test models: small batches and context, a spare chat model for kill tests, one with room for
    tool schemas in its prompts (tests/e2e/conftest.py starts its worker), a ghost without workers."""
    path = tmp_path_factory.mktemp("config") / "models.yaml"
    chat = models_dir / "tiny-chat"
    path.write_text(
        f"""
models:
  - {{name: tiny-chat, aliases: [gpt-test], kind: chat, source: "{chat}", context_length: 256,
     max_batch_size: 4}}
  - {{name: {SPARE}, kind: chat, source: "{chat}", context_length: {SPARE_CONTEXT_LENGTH}, max_batch_size: 2,
     max_queue: 3}}
  - {{name: tiny-chat-tools, kind: chat, source: "{chat}", context_length: 2048, max_batch_size: 4}}
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
def base_env(redis_server: RedisServer, models_file: Path, tmp_path_factory) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        MODELYARD_REDIS_URL=redis_server.url,
        # One folder for every API process of the session, as a deployment shares one (Batch API).
        MODELYARD_FILES_DIR=str(tmp_path_factory.mktemp("files")),
        MODELYARD_MODELS_FILE=str(models_file),
        MODELYARD_HEARTBEAT_TTL=str(HEARTBEAT_TTL),
        # Long enough that rq-dashboard's test still finds the session's finished jobs.
        MODELYARD_JOB_RETENTION_S="3600",
        MODELYARD_LOG_LEVEL="INFO",
        # Threads of an API run with MODELYARD_API_WORKER_CLASS=gthread (bin/api's default is 512).
        MODELYARD_API_THREADS="64",
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
def make_app(models_file) -> Iterator[Callable[..., Flask]]:
    """Factory: ``make_app(redis_url, **settings)``, an API app (Flask test client side) on the test
    models file with those settings; each is closed after the test."""
    from api.app import create_app
    from shared.config import Settings

    made = []

    def make(redis_url: str, **settings):
        app = create_app(Settings(redis_url=redis_url, models_file=models_file, **settings))
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["modelyard"].close()


@pytest.fixture
def app(make_app, redis_db):
    """An API app on this module's own database: no live workers there (for what is decided before a
    job runs, and for Redis state a test writes itself)."""
    return make_app(redis_db.url, request_timeout=30)


@pytest.fixture
def client(app):
    return app.test_client()


def pytest_configure(config):
    # bin/ scripts started by the tests use the environment running the tests.
    os.environ.setdefault("MODELYARD_VENV", sys.prefix)
