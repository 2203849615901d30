"""Redis commands per request and per token (docs/scaling.md): ``INFO commandstats`` deltas around
runs of 20 chat requests (4 at a time), plain and streamed, 1 and 64 tokens, through bin/api and
one bin/worker (tiny-chat) on a private redis-server, less the idle rate measured for 10 s first.

    .venv/bin/python bench/redis_ops.py [MODELS_FILE]     # default: the repository's models.yaml
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from harness import REPO, RedisServer, WorkerProcess, free_port, start_api, stop_process

REQUESTS = 20


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="redis-ops-"))
    models = sys.argv[1] if len(sys.argv) > 1 else str(REPO / "models.yaml")
    redis = RedisServer(port=free_port(), workdir=work)
    redis.start()
    env = {**os.environ, "MODELYARD_REDIS_URL": redis.url, "MODELYARD_MODELS_FILE": models}
    env.setdefault("HF_HUB_OFFLINE", "1")
    worker = WorkerProcess(env, ["tiny-chat"], work / "worker.log").wait_ready(redis)
    api, log = start_api(env, work / "api.log")
    client = redis.client()

    def stats() -> dict[str, int]:
        return {k.removeprefix("cmdstat_"): v["calls"] for k, v in client.info("commandstats").items()}

    def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
        return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}

    def chat(stream: bool, max_tokens: int) -> None:
        body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}]}
        body |= {"max_tokens": max_tokens, "stream": stream}
        with requests.post(api.url + "/v1/chat/completions", json=body, stream=stream, timeout=120) as r:
            r.raise_for_status()
            for _ in r.iter_lines():
                pass

    try:
        chat(False, 4)
        before, started = stats(), time.time()
        time.sleep(10)
        idle = sum(delta(before, stats()).values()) / (time.time() - started)
        results: dict[str, object] = {"idle commands/s": round(idle, 1)}
        for stream in (False, True):
            for max_tokens in (1, 64):
                before, started = stats(), time.time()
                with ThreadPoolExecutor(4) as pool:
                    list(pool.map(lambda _, s=stream, m=max_tokens: chat(s, m), range(REQUESTS)))
                elapsed = time.time() - started
                counts = delta(before, stats())
                per_request = (sum(counts.values()) - idle * elapsed) / REQUESTS
                top = sorted(counts.items(), key=lambda kv: -kv[1])[:6]
                name = f"{'streamed' if stream else 'plain'}, max_tokens {max_tokens}"
                results[name] = {"commands per request": round(per_request, 1), "most frequent": top}
        print(json.dumps(results, indent=1))
    finally:
        stop_process(api.proc)
        log.close()
        worker.stop()
        redis.stop()


if __name__ == "__main__":
    main()
