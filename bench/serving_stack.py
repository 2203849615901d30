"""The stack bench/bench_serving.py measures: redis-server, one worker per model and the API on free
ports of 127.0.0.1, with sleep workers on demand; and the requests it is sent."""

from __future__ import annotations

import argparse
import functools
import os
from collections import Counter
from collections.abc import Callable, Collection
from pathlib import Path
from typing import IO, Any

import http_load  # bench/, the script's folder
import requests
from loadgen import API_HISTOGRAMS, CpuMonitor
from report import log
from workload import CHAT_MODEL, EMBED_MODEL, REQUEST_TIMEOUT_S, SLEEP_ENTRY, SLEEP_MODEL, SLEEP_WORKER

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
from shared.status import WorkerStatus

#: Workers beat every third of this; their beats carry the engine counters read for each window.
HEARTBEAT_TTL_S = 6


def engine_totals(
    redis: RedisServer, model: str, pids: Collection[int] | None = None
) -> tuple[dict[str, float], dict[str, int]]:
    """``model``'s engine counters summed over its workers' latest heartbeats (of ``pids`` only, if
    given; ``max_running_seen`` is the largest), and the jobs done by each host. Approximate: a
    worker beats every ``HEARTBEAT_TTL_S / 3`` s; diagnostics only, so a failed read is logged."""
    total: Counter = Counter()
    per_host: Counter = Counter()
    try:
        client = redis.client()
        for key in client.scan_iter(match=keys.worker_key("*"), count=100):
            status = WorkerStatus.decode(client.get(key))
            stats = status.engines.get(model) if status is not None else None
            if stats is None or (pids is not None and status.pid not in pids):
                continue
            counts = stats.model_dump(exclude={"kind"})
            seen = counts.pop("max_running_seen", None)
            total.update(counts)
            if seen is not None:
                total["max_running_seen"] = max(total["max_running_seen"], seen)
            per_host[status.host] += stats.jobs_done
    except Exception as exc:  # noqa: BLE001 - diagnostics only
        log(f"could not read engine counters: {exc!r}")
    return dict(total), dict(per_host)


class Stack:
    """redis-server, one worker per model, the API; sleep workers on demand (bench/sleep_worker.py)."""

    def __init__(self, folder: Path, args: argparse.Namespace, monitor: CpuMonitor) -> None:
        self.folder = folder
        self.monitor = monitor
        self.redis = RedisServer(port=free_port(), workdir=folder)
        self.models_file = folder / "models.yaml"
        self.models_file.write_text(
            "models:\n"
            f"  - {{name: {CHAT_MODEL}, kind: chat, source: '{REPO / 'models' / 'tiny-chat'}',"
            f" context_length: 2048, max_batch_size: {args.chat_slots}"
            + (f", threads: {args.chat_threads}" if args.chat_threads else "")
            + "}\n"
            f"  - {{name: {EMBED_MODEL}, kind: embedding, source: '{REPO / 'models' / 'all-MiniLM-L6-v2'}',"
            f" max_batch_size: {args.embed_slots}}}\n"
            f"  - {SLEEP_ENTRY}\n"
        )
        self.env = {
            **os.environ,
            "MODELYARD_REDIS_URL": self.redis.url,
            "MODELYARD_MODELS_FILE": str(self.models_file),
            "MODELYARD_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT_S),
            "MODELYARD_LOG_LEVEL": args.log_level,
            "MODELYARD_HEARTBEAT_TTL": str(HEARTBEAT_TTL_S),
            "HF_HUB_OFFLINE": "1",
        }
        if args.worker_omp_threads:
            self.env["OMP_NUM_THREADS"] = str(args.worker_omp_threads)
        self.port = free_port()
        self.client = args.client
        self.api: ApiServer | None = None
        self._api_log: IO[bytes] | None = None
        self.workers: dict[str, WorkerProcess] = {}
        self.sleepers: list[WorkerProcess] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.redis.start()
        assert self.redis.proc is not None
        self.monitor.set("redis", [self.redis.proc.pid])
        for model in (CHAT_MODEL, EMBED_MODEL):
            self.workers[model] = WorkerProcess(self.env, [model], self.folder / f"worker-{model}.log")
            self.monitor.set(f"worker_{model}", [self.workers[model].pid])
        self.api, self._api_log = start_api(self.env, self.folder / "api.log", port=self.port)
        self.monitor.set("api", [self.api.proc.pid])
        wait_until(lambda: self.live(CHAT_MODEL) >= 1 and self.live(EMBED_MODEL) >= 1, 300, "the stack", 0.5)

    def live(self, model: str) -> int:
        """Live workers of ``model``; raises when a process of the stack has exited."""
        if self.api is not None and self.api.proc.poll() is not None:
            raise RuntimeError(f"the API exited with {self.api.proc.returncode}; logs in {self.folder}")
        for worker in [*self.workers.values(), *self.sleepers]:
            worker.check_running()
        return live_models(self.url).get(model, 0)

    def counters(self, model: str) -> Callable[[], dict[str, float]]:
        """A reader of ``model``'s engine counters, summed over its workers' latest heartbeats (approximate:
        a worker beats every ``HEARTBEAT_TTL_S / 3`` s), and of the API's histograms for it (/metrics)."""

        def read() -> dict[str, float]:
            total: Counter = Counter()
            try:
                text = requests.get(self.url + "/metrics", timeout=5).text
                for line in text.splitlines():
                    if f'model="{model}"' not in line:
                        continue
                    for short, metric in API_HISTOGRAMS:
                        for suffix in ("sum", "count"):
                            if line.startswith(f"{metric}_{suffix}{{"):
                                total[f"{short}_{suffix}"] += float(line.rsplit(" ", 1)[1])
            except (requests.RequestException, ValueError) as exc:
                log(f"could not read /metrics: {exc!r}")
            total.update(engine_totals(self.redis, model)[0])
            return dict(total)

        return read

    def call(
        self,
        path: str,
        body: Callable[[int, int], dict[str, Any]],
        value: Callable[[int, bytes], float | None],
    ) -> http_load.RawCall | Callable[[requests.Session, int, int], float | None]:
        """A ``POST`` of ``body(client, n)`` to ``path`` on the client that ``--client`` chose."""
        if self.client == "raw":
            request = functools.partial(http_load.post_json, "127.0.0.1", self.port, path)
            return http_load.RawCall("127.0.0.1", self.port, lambda i, k: request(body(i, k)), value)

        def send(session: requests.Session, thread: int, k: int) -> float | None:
            r = session.post(self.url + path, json=body(thread, k), timeout=REQUEST_TIMEOUT_S + 5)
            return value(r.status_code, r.content)

        return send

    def sleep_workers(self, count: int) -> None:
        """Run ``count`` sleep-model worker processes (starting more as needed) and wait until all beat."""
        while len(self.sleepers) < count:
            n = len(self.sleepers)
            log_path = self.folder / f"worker-{SLEEP_MODEL}-{n}.log"
            self.sleepers.append(WorkerProcess(self.env, [SLEEP_MODEL], log_path, program=SLEEP_WORKER))
        self.monitor.set(f"workers_{SLEEP_MODEL}", [w.pid for w in self.sleepers])
        wait_until(lambda: self.live(SLEEP_MODEL) >= count, 120, f"{count} {SLEEP_MODEL} workers", 0.3)

    def stop(self) -> None:
        workers = [*self.sleepers, *self.workers.values()]
        api = [self.api.proc] if self.api is not None else []
        stop_processes([*(w.proc for w in workers), *api], timeout=30)  # workers drain side by side
        for worker in workers:
            worker.stop()  # closes its log
        if self._api_log is not None:
            self._api_log.close()
        self.redis.stop()
