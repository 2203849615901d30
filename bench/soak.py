"""Soak test (not a unit test): mixed traffic for minutes while a chaos loop kills and restarts
workers and Redis. Prints one JSON summary; a good run has ``hung == 0``, ``unclear == 0`` and
``leftover_started == 0``.

    .venv/bin/python bench/soak.py --minutes 5

It starts its own redis-server, workers and API on free ports of 127.0.0.1 and stops them at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import redis
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rq.registry import StartedJobRegistry  # noqa: E402
from rq.serializers import JSONSerializer  # noqa: E402

from tests.support import RedisServer, free_port, stop_process, wait_until  # noqa: E402

MODELS = ("tiny-chat", "minilm", "tiny-reranker")
#: Seconds the server gives each request; a client waiting longer than this plus slack has hung.
DEADLINE_S = 20
HANG_S = DEADLINE_S + 15


def write_models_file(folder: Path) -> Path:
    models = REPO / "models"
    path = folder / "models.yaml"
    path.write_text(
        "models:\n"
        f"  - {{name: tiny-chat, kind: chat, source: '{models / 'tiny-chat'}', context_length: 512,"
        " max_batch_size: 4, max_queue: 64}\n"
        f"  - {{name: minilm, kind: embedding, source: '{models / 'all-MiniLM-L6-v2'}', max_batch_size: 4}}\n"
        f"  - {{name: tiny-reranker, kind: rerank, source: '{models / 'tiny-reranker'}',"
        " max_batch_size: 4}\n"
    )
    return path


class Stack:
    """redis-server, one worker per model (two for chat) and the API, as bin/up would run them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.redis = RedisServer(port=free_port(), workdir=folder)
        self.env = {
            **os.environ,
            "MODELYARD_REDIS_URL": self.redis.url,
            "MODELYARD_MODELS_FILE": str(write_models_file(folder)),
            "MODELYARD_HEARTBEAT_TTL": "3",
            "MODELYARD_REQUEST_TIMEOUT": str(DEADLINE_S),
            "MODELYARD_LOG_LEVEL": "WARNING",
            "HF_HUB_OFFLINE": "1",
        }
        self.port = free_port()
        self.workers: dict[str, subprocess.Popen] = {}
        self.api: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.redis.start()
        for name in ("chat-a", "chat-b", "minilm", "tiny-reranker"):
            self.start_worker(name)
        log = open(self.folder / "api.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.api = subprocess.Popen(
            [str(REPO / "bin" / "api")],
            env={**self.env, "MODELYARD_PORT": str(self.port)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self.ready, 180, "the stack", interval=0.5)

    def ready(self) -> bool:
        try:
            body = requests.get(self.url + "/health", timeout=2).json()
            return all(body.get("models", {}).get(m) for m in MODELS)
        except (requests.RequestException, ValueError):
            return False

    def start_worker(self, name: str) -> None:
        model = "tiny-chat" if name.startswith("chat") else name
        log = open(self.folder / f"worker-{name}.log", "ab")  # noqa: SIM115
        self.workers[name] = subprocess.Popen(
            [str(REPO / "bin" / "worker"), model], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )

    def stop(self) -> None:
        for proc in [self.api, *self.workers.values()]:
            if proc is not None:
                stop_process(proc)
        self.redis.stop()


def one_request(url: str, rng: random.Random, codes: Counter) -> str:
    """Send one random request; returns 'ok', 'clear' (an OpenAI error), 'unclear' or 'hung'.

    Like a well-behaved client, it waits out a 429/503's Retry-After (at most 2 s) before returning.
    """
    kind = rng.choice(["chat", "chat-stream", "completion", "embeddings", "rerank"])
    body: dict
    if kind.startswith("chat"):
        path = "/v1/chat/completions"
        body = {
            "model": "tiny-chat",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": rng.randint(8, 200),
            "stream": kind == "chat-stream",
        }
    elif kind == "completion":
        path, body = "/v1/completions", {"model": "tiny-chat", "prompt": "Once", "max_tokens": 32}
    elif kind == "embeddings":
        path, body = "/v1/embeddings", {"model": "minilm", "input": ["a cat", "a dog"] * rng.randint(1, 8)}
    else:
        path, body = "/v1/rerank", {"model": "tiny-reranker", "query": "q", "documents": ["a", "b", "c"]}
    try:
        response = requests.post(url + path, json=body, timeout=HANG_S, stream=body.get("stream", False))
        if response.status_code != 200:
            error = response.json().get("error")
            if not error:
                return "unclear"
            codes[f"{response.status_code} {error['code']}"] += 1
            if response.status_code in (429, 503):
                time.sleep(min(2.0, float(response.headers.get("Retry-After", 1))))
            return "clear"
        if not body.get("stream"):
            response.json()
            return "ok"
        lines = [line for line in response.iter_lines() if line]
        if lines and lines[-1] == b"data: [DONE]":
            if any(line.startswith(b'data: {"error"') for line in lines):
                codes["stream error frame"] += 1
                return "clear"
            return "ok"
        return "unclear"
    except requests.Timeout:
        return "hung"
    except (requests.ConnectionError, ValueError):
        return "unclear"


def chaos(stack: Stack, stop: threading.Event, rng: random.Random, events: Counter, every: float) -> None:
    """About every ``every`` seconds: kill -9 a worker, SIGTERM one, or restart Redis; then bring it back."""
    while not stop.wait(rng.uniform(every / 2, every * 1.5)):
        action = rng.choice(["kill", "kill", "term", "redis"])
        if action == "redis":
            stack.redis.stop()
            time.sleep(rng.uniform(1, 3))
            stack.redis.start()
        else:
            name = rng.choice(list(stack.workers))
            proc = stack.workers[name]
            proc.send_signal(signal.SIGKILL if action == "kill" else signal.SIGTERM)
            proc.wait()
            stack.start_worker(name)
        events[action] += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--chaos-every", type=float, default=20, help="mean seconds between chaos events")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="modelyard-soak-"))
    stack = Stack(folder)
    stack.start()
    outcomes: Counter = Counter()
    codes: Counter = Counter()
    chaos_events: Counter = Counter()
    lock = threading.Lock()
    stop = threading.Event()
    end = time.monotonic() + args.minutes * 60

    def client(i: int) -> None:
        rng = random.Random(args.seed * 1000 + i)
        while time.monotonic() < end:
            outcome = one_request(stack.url, rng, codes)
            with lock:
                outcomes[outcome] += 1

    try:
        chaos_thread = threading.Thread(
            target=chaos, args=(stack, stop, random.Random(args.seed), chaos_events, args.chaos_every)
        )
        chaos_thread.start()
        clients = [threading.Thread(target=client, args=(i,)) for i in range(args.concurrency)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        stop.set()
        chaos_thread.join()
        # Let dead workers' heartbeats expire and the janitor settle rq's registries.
        wait_until(stack.ready, 120, "the stack to recover", interval=0.5)
        time.sleep(8)
        conn = redis.Redis.from_url(stack.redis.url)
        leftover = sum(
            len(StartedJobRegistry(m, connection=conn, serializer=JSONSerializer).get_job_ids(cleanup=False))
            for m in MODELS
        )
    finally:
        stack.stop()
    summary = {
        "minutes": args.minutes,
        "concurrency": args.concurrency,
        "sent": sum(outcomes.values()),
        "succeeded": outcomes["ok"],
        "failed_with_clear_error": outcomes["clear"],
        "failed_unclear": outcomes["unclear"],
        "hung": outcomes["hung"],
        "errors": dict(codes),
        "leftover_started": leftover,
        "chaos": dict(chaos_events),
        "chaos_every_s": args.chaos_every,
        "logs": str(folder),
    }
    print(json.dumps(summary))
    return 0 if summary["hung"] == 0 and leftover == 0 and summary["failed_unclear"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
