"""Soak test (not a unit test): mixed traffic for minutes while a chaos loop kills and restarts
workers and Redis, beside hostile clients: poisoned inputs and JSON bombs mixed into the good
traffic, connections that stall mid-body, bursts past every pool, one huge request now and then.
Prints one JSON summary; a good run has no request ``hung``, ``failed_wrongly`` or ``failed_unclear``,
no ``work_run_for_nobody`` ``otherwise`` (while no fault was on) and ``leftover_started == 0``.

    .venv/bin/python bench/soak.py --minutes 5

It starts its own redis-server, workers and API on free ports of 127.0.0.1 and stops them at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import IO

import redis
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from soak_traffic import (  # bench/, the script's folder
    DEADLINE_S,
    Faults,
    Tally,
    bursts,
    health_watch,
    one_request,
    stalled_clients,
)

from harness import (
    REPO,
    ApiServer,
    RedisServer,
    WorkerProcess,
    free_port,
    live_models,
    start_api,
    stop_processes,
    wait_until,
)
from shared import keys

MODELS = ("tiny-chat", "minilm", "tiny-reranker")


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
        self.workers: dict[str, WorkerProcess] = {}
        self.api: ApiServer | None = None
        self._api_log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.redis.start()
        for name in ("chat-a", "chat-b", "minilm", "tiny-reranker"):
            self.start_worker(name)
        self.api, self._api_log = start_api(self.env, self.folder / "api.log", port=self.port)
        wait_until(self.ready, 180, "the stack", interval=0.5)

    def ready(self) -> bool:
        live = live_models(self.url)
        return all(live.get(m) for m in MODELS)

    def beating(self, name: str) -> bool:
        """Whether the process now started as worker ``name`` has beaten (its models are loaded)."""
        try:
            return self.workers[name].status(self.redis) is not None
        except redis.RedisError:
            return False

    def start_worker(self, name: str) -> None:
        """Start worker ``name``; a restarted one appends to the same log."""
        model = "tiny-chat" if name.startswith("chat") else name
        # INFO: each job's end is a log line, which tells the work that ran for nobody.
        env = {**self.env, "MODELYARD_LOG_LEVEL": "INFO"}
        self.workers[name] = WorkerProcess(env, [model], self.folder / f"worker-{name}.log")

    def stop(self) -> None:
        api = [self.api.proc] if self.api is not None else []
        stop_processes([*api, *(w.proc for w in self.workers.values())])
        for worker in self.workers.values():
            worker.stop()  # closes its log
        if self._api_log is not None:
            self._api_log.close()
        self.redis.stop()


def chaos(
    stack: Stack, stop: threading.Event, rng: random.Random, events: Counter, every: float, faults: Faults
):
    """About every ``every`` seconds: kill -9 a worker, SIGTERM one, or restart Redis; then bring it back."""
    while not stop.wait(rng.uniform(every / 2, every * 1.5)):
        action = rng.choice(["kill", "kill", "term", "redis"])
        fault = faults.begin(action)
        if action == "redis":
            stack.redis.stop()
            time.sleep(rng.uniform(1, 3))
            stack.redis.start()
        else:
            name = rng.choice(list(stack.workers))
            worker = stack.workers[name]
            worker.proc.send_signal(signal.SIGKILL if action == "kill" else signal.SIGTERM)
            worker.proc.wait()
            worker.stop()  # closes its log
            stack.start_worker(name)
            # /health alone passes at once: the killed worker's heartbeat outlives it by a TTL.
            wait_until(
                lambda name=name: stack.beating(name) and stack.ready(),
                120,
                "the restarted worker",
                interval=0.5,
            )
        faults.end(fault)
        events[action] += 1


def jobs_run_for_nobody(folder: Path, unanswered: dict[str, bool]) -> dict[str, int]:
    """Jobs the workers completed although their client got no result (an error, or nothing),
    split by whether a fault was on meanwhile (a dead Redis cuts a result off on its way)."""
    done = set()
    for log in folder.glob("worker-*.log"):
        for line in log.read_text(errors="replace").splitlines():
            parts = line.split(" job ", 1)
            if len(parts) == 2 and " done in " in parts[1]:
                done.add(parts[1].split(" ", 1)[0])
    wasted = [unanswered[job_id] for job_id in done & unanswered.keys()]
    return {"while_a_fault_was_on": sum(wasted), "otherwise": len(wasted) - sum(wasted)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--chaos-every", type=float, default=20, help="mean seconds between chaos events")
    parser.add_argument(
        "--hostile", type=float, default=0.1, help="share of the clients' requests that attack"
    )
    parser.add_argument("--stalled", type=int, default=200, help="connections held with half a body")
    parser.add_argument("--burst-every", type=float, default=45, help="seconds between bursts")
    parser.add_argument("--burst-size", type=int, default=300, help="concurrent requests in a burst")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="modelyard-soak-"))
    stack = Stack(folder)
    stack.start()
    tally, faults = Tally(), Faults()
    chaos_events: Counter = Counter()
    health: list[float] = []
    stop = threading.Event()
    end = time.monotonic() + args.minutes * 60

    def client(i: int) -> None:
        rng = random.Random(args.seed * 1000 + i)
        while time.monotonic() < end:
            one_request(stack.url, rng, faults, tally, args.hostile)

    background = [
        threading.Thread(
            target=chaos,
            args=(stack, stop, random.Random(args.seed), chaos_events, args.chaos_every, faults),
        ),
        threading.Thread(target=stalled_clients, args=(stack.port, stop, args.stalled, tally)),
        threading.Thread(
            target=bursts, args=(stack.url, stop, args.burst_every, args.burst_size, faults, tally)
        ),
        threading.Thread(target=health_watch, args=(stack.url, stop, health)),
    ]
    try:
        for thread in background:
            thread.start()
        clients = [threading.Thread(target=client, args=(i,)) for i in range(args.concurrency)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        stop.set()
        for thread in background:
            thread.join()
        # Let dead workers' heartbeats expire and the janitor settle rq's registries.
        wait_until(stack.ready, 120, "the stack to recover", interval=0.5)
        conn = redis.Redis.from_url(stack.redis.url)
        registries = [
            StartedJobRegistry(keys.queue_name(m), connection=conn, serializer=JSONSerializer) for m in MODELS
        ]

        def started() -> int:
            return sum(len(r.get_job_ids(cleanup=False)) for r in registries)

        try:
            wait_until(lambda: started() == 0, 60, "the started registries to empty", interval=0.5)
        except TimeoutError:
            pass
        leftover = started()
        skipped = {k.decode(): int(v) for k, v in conn.hgetall(keys.skipped_jobs_key()).items()}
    finally:
        stack.stop()
    outcomes = tally.outcomes
    wasted = jobs_run_for_nobody(folder, tally.unanswered_jobs)
    health.sort()
    summary = {
        "minutes": args.minutes,
        "concurrency": args.concurrency,
        "hostile_share": args.hostile,
        "stalled_connections": args.stalled,
        "bursts": f"{args.burst_size} every {args.burst_every}s",
        "sent": sum(outcomes.values()),
        "succeeded": outcomes["ok"],
        "failed_with_clear_error": outcomes["clear"],
        "failed_wrongly": outcomes["wrong"],
        "failed_unclear": outcomes["unclear"],
        "hung": outcomes["hung"],
        "work_run_for_nobody": wasted,
        "jobs_skipped_by_workers": skipped,
        "leftover_started": leftover,
        "health_s": {
            "p50": health[len(health) // 2] if health else None,
            "max": health[-1] if health else None,
        },
        "clear_errors": dict(tally.codes),
        "wrong_errors": dict(tally.wrong),
        "chaos": dict(chaos_events),
        "chaos_every_s": args.chaos_every,
        "logs": str(folder),
    }
    print(json.dumps(summary))
    good = not (
        outcomes["hung"] or leftover or outcomes["wrong"] or outcomes["unclear"] or wasted["otherwise"]
    )
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
