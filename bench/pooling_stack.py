"""The servers bench/embeddings_backends.py drives: redis-server, one worker per backend serving
all-MiniLM-L6-v2 and tiny-reranker (``minilm-<backend>``, ``reranker-<backend>``), ``bin/api``, and
Infinity's torch engine on the same MiniLM folder when ``/tmp/infinity-venv`` holds it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import requests

from harness import (
    REPO,
    RedisServer,
    WorkerProcess,
    free_port,
    live_models,
    start_api,
    stop_processes,
    wait_until,
)

INFINITY = Path("/tmp/infinity-venv/bin/infinity_emb")
MINILM = REPO / "models" / "all-MiniLM-L6-v2"
RERANKER = REPO / "models" / "tiny-reranker"
SERVED_NAME = "all-MiniLM-L6-v2"  # Infinity's served model name


class Servers:
    """redis-server, a worker per backend, the API, and Infinity when installed."""

    def __init__(self, folder: Path, backends: list[str], infinity: bool) -> None:
        self.folder = folder
        self.backends = backends
        self.redis = RedisServer(port=free_port(), workdir=folder)
        self.models_file = folder / "models.yaml"
        lines = ["models:"]
        for backend in backends:
            lines += [
                f"  - {{name: minilm-{backend}, kind: embedding, backend: {backend}, source: '{MINILM}',"
                " max_batch_size: 16}",
                f"  - {{name: reranker-{backend}, kind: rerank, backend: {backend}, source: '{RERANKER}',"
                " max_batch_size: 16}",
            ]
        self.models_file.write_text("\n".join(lines) + "\n")
        self.env = {
            **os.environ,
            "MODELYARD_REDIS_URL": self.redis.url,
            "MODELYARD_MODELS_FILE": str(self.models_file),
            "MODELYARD_LOG_LEVEL": "WARNING",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        self.workers: list[WorkerProcess] = []
        self.api = None
        self._api_log = None
        self.infinity: subprocess.Popen | None = None
        self.infinity_port = free_port()
        self.want_infinity = infinity

    @property
    def url(self) -> str:
        assert self.api is not None
        return self.api.url

    @property
    def infinity_url(self) -> str:
        return f"http://127.0.0.1:{self.infinity_port}"

    def start(self) -> None:
        self.redis.start()
        for backend in self.backends:
            names = [f"minilm-{backend}", f"reranker-{backend}"]
            self.workers.append(WorkerProcess(self.env, names, self.folder / f"worker-{backend}.log"))
        self.api, self._api_log = start_api(self.env, self.folder / "api.log")
        if self.want_infinity:
            self._start_infinity()
        wanted = [f"{kind}-{b}" for b in self.backends for kind in ("minilm", "reranker")]

        def ready() -> bool:
            for worker in self.workers:
                worker.check_running()
            live = live_models(self.url)
            return all(live.get(name, 0) >= 1 for name in wanted)

        wait_until(ready, 300, "the workers", 0.5)
        if self.infinity is not None:

            def infinity_ready() -> bool:
                if self.infinity.poll() is not None:
                    raise RuntimeError(f"infinity exited; its log: {self.folder / 'infinity.log'}")
                try:
                    return requests.get(self.infinity_url + "/v1/models", timeout=2).status_code == 200
                except requests.RequestException:
                    return False

            wait_until(infinity_ready, 300, "infinity", 0.5)

    def _start_infinity(self) -> None:
        log_file = open(self.folder / "infinity.log", "wb")  # noqa: SIM115 - closed with the process
        argv = [
            str(INFINITY),
            "v2",
            "--model-id",
            str(MINILM),
            "--served-model-name",
            SERVED_NAME,
            "--engine",
            "torch",
            "--device",
            "cpu",
            "--no-vector-disk-cache",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.infinity_port),
            "--url-prefix",
            "/v1",
        ]
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "INFINITY_ANONYMOUS_USAGE_STATS": "0",
            "DO_NOT_TRACK": "1",
        }
        self.infinity = subprocess.Popen(argv, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        self._infinity_log = log_file

    def stop(self) -> None:
        procs = [w.proc for w in self.workers] + ([self.api.proc] if self.api else [])
        if self.infinity is not None:
            procs.append(self.infinity)
        stop_processes(procs, timeout=30)
        for worker in self.workers:
            worker.stop()
        if self._api_log is not None:
            self._api_log.close()
        if self.infinity is not None:
            self._infinity_log.close()
        self.redis.stop()
