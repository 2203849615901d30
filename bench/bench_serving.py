"""Serving benchmark of GitHub issue 3 (a script, not a test): modelyard against the same models
called in-process, in one run.

    .venv/bin/python bench/bench_serving.py            # about 3 minutes on 2 quiet cores
    .venv/bin/python bench/bench_serving.py --quick    # about 3 s per measurement: a smoke test
    .venv/bin/python bench/bench_serving.py --only embeddings,chat,dispatch --duration 12

It starts its own redis-server, workers and API (bin/worker, bench/sleep_worker.py, bin/api) on free
ports of 127.0.0.1, with a models file in a temporary folder pointing at models/, and stops them at
the end. It prints JSON lines on stdout: first the run's ``meta`` (the exact command, the date, git
HEAD, the machine), then one line per measurement with ``baseline``, ``modelyard``, their ``ratio``,
the issue's ``target`` and ``pass``. Progress goes to stderr.

1. Embeddings, one short sentence per request: modelyard requests/s at concurrency 64 against the
   in-process ``Embedder.embed`` at its best batch size (1, 8, 32, 64, 128), and p50 latency at
   concurrency 1 against an in-process one-sentence ``embed`` (targets: >= 0.8x, within 5 ms).
2. Chat, tiny-chat, max_tokens 64 with ``ignore_eos`` (temperature 0 without it, if the API refuses
   it): generated tokens/s at concurrency 16 against concurrency 1 (target >= 4x), and the streamed
   time to first token at concurrency 1 against the in-process ``CausalLM`` prefill + first sample
   (target within 10 ms). For reference, also the in-process ``GenerationEngine`` at 1 and 16.
3. Dispatch: a model that sleeps 50 ms per batch (one job per batch), 1 worker against 8 (target >= 7x).

Every window also reports the CPU (in cores) that the API, each worker, Redis and this process used,
and what the whole machine used, so a missed target can be put down to its cause.

Non-streamed requests go through ``bench/http_load.py`` (``--client raw``, the default): keep-alive
connections on one asyncio loop, ~0.1 ms of CPU per request here. ``--client requests`` uses a
``requests.Session`` per client thread (~1 ms per request, taken from the same 2 cores as the stack;
the figures before 2026-12-01 were measured so). Streamed requests (time to first token) always use
``requests``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import http_load  # noqa: E402  (bench/, the script's folder)

from shared import keys  # noqa: E402
from shared.models import ModelCatalog  # noqa: E402
from tests.support import RedisServer, free_port, redis_server_binary, stop_process, wait_until  # noqa: E402

EMBED_MODEL = "all-MiniLM-L6-v2"
CHAT_MODEL = "tiny-chat"
SLEEP_MODEL = "sleep-50ms"
SLEEP_MS = 50
#: Seconds the server gives each request; the client's timeout is a little longer.
REQUEST_TIMEOUT_S = 60
#: Workers beat every third of this; their beats carry the engine counters read for each window.
HEARTBEAT_TTL_S = 6
#: Upper bound on requests per client thread in one window (the windows are bounded in time too).
MAX_REQUESTS_PER_THREAD = 200_000
SECTIONS = ("embeddings", "chat", "dispatch")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def sentences(count: int = 256) -> list[str]:
    """Short, distinct English sentences (10 to 14 MiniLM tokens)."""
    subjects = [
        "The cat",
        "A small dog",
        "My neighbour",
        "The old train",
        "A red bird",
        "The teacher",
        "Our team",
        "The river",
        "A tired child",
        "The new phone",
        "The market",
        "A quiet city",
        "The last bus",
        "A bright star",
        "The baker",
        "An open window",
    ]
    verbs = [
        "sits near",
        "looks at",
        "waits for",
        "runs past",
        "talks about",
        "sleeps under",
        "finds",
        "remembers",
    ]
    objects = [
        "the warm mat",
        "a blue door",
        "the busy station",
        "an empty park",
        "the tall tree",
        "a long letter",
    ]
    out = []
    for i in range(count):
        s, v, o = subjects[i % 16], verbs[(i // 16) % 8], objects[(i // 128 + i) % 6]
        out.append(f"{s} {v} {o} on day {i}.")
    return out


SENTENCES = sentences()


def chat_messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Hello! Please tell me a short story about the number {i % 97}."}]


# -- measuring ------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def rnd(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


class CpuMonitor:
    """CPU seconds of named process groups (a group's processes and their children), of the whole
    machine, and of the busiest processes that are not ours (the machine is shared)."""

    def __init__(self) -> None:
        self.groups: dict[str, list[int]] = {"bench_process": [os.getpid()]}

    def set(self, name: str, pids: list[int]) -> None:
        self.groups[name] = pids

    def snapshot(self) -> dict[str, Any]:
        groups: dict[str, float] = {}
        ours: set[int] = set()
        for name, pids in self.groups.items():
            total = 0.0
            for pid in pids:
                try:
                    proc = psutil.Process(pid)
                    procs = [proc] if name == "bench_process" else [proc, *proc.children(recursive=True)]
                    for p in procs:
                        times = p.cpu_times()
                        total += times.user + times.system
                        ours.add(p.pid)
                except psutil.Error:
                    continue
            groups[name] = total
        others: dict[int, tuple[str, float]] = {}
        for proc in psutil.process_iter(["name", "cpu_times"]):
            times = proc.info.get("cpu_times")
            if proc.pid not in ours and times is not None:
                others[proc.pid] = (proc.info.get("name") or "?", times.user + times.system)
        machine = psutil.cpu_times()
        idle = machine.idle + getattr(machine, "iowait", 0.0)
        steal = getattr(machine, "steal", 0.0)
        return {"groups": groups, "others": others, "busy": sum(machine) - idle - steal, "steal": steal}

    @staticmethod
    def cores(before: dict[str, Any], after: dict[str, Any], seconds: float) -> dict[str, Any]:
        """Cores each group used on average between two snapshots, the machine's, and the top others'."""
        used: dict[str, Any] = {
            name: round((t - before["groups"].get(name, t)) / seconds, 2)
            for name, t in after["groups"].items()
        }
        ours = sum(used.values())
        machine = (after["busy"] - before["busy"]) / seconds
        used["machine_busy"] = round(machine, 2)
        used["machine_steal"] = round((after["steal"] - before["steal"]) / seconds, 2)
        used["other_processes"] = round(machine - ours, 2)
        top = sorted(
            (
                ((t - before["others"][pid][1]) / seconds, name)
                for pid, (name, t) in after["others"].items()
                if pid in before["others"]
            ),
            reverse=True,
        )[:3]
        used["top_other_processes"] = [[name, round(c, 2)] for c, name in top if c >= 0.05]
        return used


@dataclass
class Sample:
    start: float
    end: float
    value: float | None
    error: str | None


@dataclass
class Window:
    """The samples of one load run and its measuring window [t_start, t_end]."""

    samples: list[Sample]
    t_start: float
    t_end: float
    concurrency: int
    cpu: dict[str, float] = field(default_factory=dict)
    #: Engine counters of the served model over the window, from worker heartbeats (approximate).
    engine: dict[str, float] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return self.t_end - self.t_start

    def done(self) -> list[Sample]:
        """Requests that finished inside the window (those in flight at its edges: by their end)."""
        return [s for s in self.samples if self.t_start <= s.end <= self.t_end]

    def ok(self) -> list[Sample]:
        return [s for s in self.done() if s.error is None]

    def rate(self) -> float:
        """Successful requests per second."""
        return len(self.ok()) / self.duration

    def value_rate(self) -> float:
        """Sum of the successful requests' values (tokens, sentences) per second."""
        return sum(s.value or 0 for s in self.ok()) / self.duration

    def latencies_ms(self) -> list[float]:
        """Latencies of successful requests that started and ended inside the window."""
        return [(s.end - s.start) * 1000 for s in self.ok() if s.start >= self.t_start]

    def values(self) -> list[float]:
        return [s.value for s in self.ok() if s.start >= self.t_start and s.value is not None]

    def errors(self) -> dict[str, int]:
        return dict(Counter(s.error for s in self.done() if s.error is not None))

    def summary(self, latency: bool = True) -> dict[str, Any]:
        lat = self.latencies_ms()
        out: dict[str, Any] = {
            "concurrency": self.concurrency,
            "window_s": round(self.duration, 2),
            "requests_ok": len(self.ok()),
            "errors": self.errors(),
            "requests_per_s": rnd(self.rate()),
        }
        if latency:
            out["latency_ms"] = {
                "p50": rnd(percentile(lat, 0.5)),
                "p90": rnd(percentile(lat, 0.9)),
                "p99": rnd(percentile(lat, 0.99)),
            }
        out["cpu_cores"] = self.cpu
        if self.engine:
            out["engine_over_window"] = self.engine
        return out


def run_load(
    concurrency: int,
    warmup: float,
    duration: float,
    call: Callable[[requests.Session, int, int], float | None] | http_load.RawCall,
    monitor: CpuMonitor,
    counters: Callable[[], dict[str, int]] | None = None,
) -> Window:
    """``concurrency`` clients send requests back to back for ``warmup + duration`` seconds; the window
    is the last ``duration`` seconds. A :class:`http_load.RawCall` runs on ``http_load``'s lean client (one
    thread); a function runs as ``call(session, thread, n)`` on a thread with a ``requests.Session``
    each (streams, and in-process calls)."""
    begin = time.perf_counter()
    t_start, t_end = begin + warmup, begin + warmup + duration
    samples: list[Sample] = []
    lock = threading.Lock()

    def record(start: float, end: float, value: float | None, error: str | None) -> None:
        with lock:
            samples.append(Sample(start, end, value, error))

    def client(index: int) -> None:
        session = requests.Session()
        try:
            for n in range(MAX_REQUESTS_PER_THREAD):
                if time.perf_counter() >= t_end:
                    break
                t0 = time.perf_counter()
                value, error = None, None
                try:
                    value = call(session, index, n)
                except Exception as exc:  # counted and shown, never fatal to the run
                    error = f"{type(exc).__name__}: {str(exc)[:120]}"
                record(t0, time.perf_counter(), value, error)
                if error is not None:
                    time.sleep(0.05)  # no busy loop against a failing server
        finally:
            session.close()

    if isinstance(call, http_load.RawCall):
        threads = [
            threading.Thread(target=http_load.drive, args=(concurrency, call, t_end, record), daemon=True)
        ]
    else:
        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, t_start - time.perf_counter()))
    before = monitor.snapshot()
    engine_before = counters() if counters else {}
    time.sleep(max(0.0, t_end - time.perf_counter()))
    after = monitor.snapshot()
    engine_after = counters() if counters else {}
    cpu = CpuMonitor.cores(before, after, t_end - t_start)
    engine = engine_delta(engine_before, engine_after)
    if "busy_ms" in engine:  # the engine threads' busy seconds per second, summed over the workers
        engine["busy_per_s"] = round(engine["busy_ms"] / 1000 / (t_end - t_start), 3)
    deadline = time.monotonic() + REQUEST_TIMEOUT_S + 10
    for thread in threads:
        thread.join(timeout=max(0.1, deadline - time.monotonic()))
    stuck = sum(thread.is_alive() for thread in threads)
    if stuck:
        log(f"warning: {stuck} client threads still running after the window")
    with lock:
        return Window(list(samples), t_start, t_end, concurrency, cpu, engine)


#: API histograms read from /metrics for each window: (short name, metric).
API_HISTOGRAMS = (
    ("api_request", "modelyard_request_duration_seconds"),
    ("api_queue_wait", "modelyard_queue_wait_seconds"),
    ("api_first_token", "modelyard_time_to_first_token_seconds"),
)


def engine_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What the engine did between two heartbeats' counters, with the mean batch it ran, and the means
    of the API's own histograms (arrival to response end, queue wait, arrival to first text)."""
    if not before or not after:
        return {}
    names = ("batches", "forward_passes", "jobs_done", "inputs_done", "busy_ms")
    names += ("steps", "prefills", "tokens_generated")
    delta: dict[str, float] = {n: after[n] - before.get(n, 0) for n in names if n in after}
    for short, _metric in API_HISTOGRAMS:
        count = after.get(f"{short}_count", 0) - before.get(f"{short}_count", 0)
        if count > 0:
            total = after.get(f"{short}_sum", 0) - before.get(f"{short}_sum", 0)
            delta[f"mean_{short}_ms"] = round(total / count * 1000, 2)
    if delta.get("batches"):
        delta["mean_jobs_per_batch"] = round(delta.get("jobs_done", 0) / delta["batches"], 2)
    if delta.get("steps"):
        delta["mean_sequences_per_decode_step"] = round(delta.get("tokens_generated", 0) / delta["steps"], 2)
    if "max_running_seen" in after:
        delta["max_running_seen"] = after["max_running_seen"]
    return delta


def measurement(
    name: str,
    unit: str,
    baseline: float,
    baseline_is: str,
    modelyard: float,
    modelyard_is: str,
    target: str,
    passed: bool | None,
    details: dict[str, Any],
    digits: int = 2,
) -> dict[str, Any]:
    return {
        "measurement": name,
        "unit": unit,
        "baseline": round(baseline, digits),
        "modelyard": round(modelyard, digits),
        "ratio": round(modelyard / baseline, 3) if baseline else None,
        "difference": round(modelyard - baseline, digits),
        "target": target,
        "pass": passed,
        "baseline_is": baseline_is,
        "modelyard_is": modelyard_is,
        "details": details,
    }


# -- the stack -------------------------------------------------------------------------------------


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
            f"  - {{name: {SLEEP_MODEL}, kind: embedding, source: 'sleep:{SLEEP_MS}', max_batch_size: 1,"
            " max_queue: 1024, coalesce_inputs: 1}\n"
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
        self.api: subprocess.Popen | None = None
        self.workers: dict[str, subprocess.Popen] = {}
        self.sleepers: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _popen(self, argv: list[str], log_name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log_file = open(self.folder / log_name, "ab")  # noqa: SIM115 - lives as long as the process
        return subprocess.Popen(argv, env=env or self.env, stdout=log_file, stderr=subprocess.STDOUT)

    def start(self) -> None:
        self.redis.start()
        assert self.redis.proc is not None
        self.monitor.set("redis", [self.redis.proc.pid])
        for model in (CHAT_MODEL, EMBED_MODEL):
            self.workers[model] = self._popen([str(REPO / "bin" / "worker"), model], f"worker-{model}.log")
            self.monitor.set(f"worker_{model}", [self.workers[model].pid])
        self.api = self._popen(
            [str(REPO / "bin" / "api")], "api.log", {**self.env, "MODELYARD_PORT": str(self.port)}
        )
        self.monitor.set("api", [self.api.pid])
        wait_until(lambda: self.live(CHAT_MODEL) >= 1 and self.live(EMBED_MODEL) >= 1, 300, "the stack", 0.5)

    def live(self, model: str) -> int:
        for name, proc in [("api", self.api), *self.workers.items()]:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; logs in {self.folder}")
        try:
            body = requests.get(self.url + "/health", timeout=2).json()
            return int(body.get("models", {}).get(model) or 0)
        except (requests.RequestException, ValueError):
            return 0

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
            try:
                client = self.redis.client()
                for key in client.scan_iter(match=keys.worker_key("*"), count=100):
                    status = json.loads(client.get(key) or "{}")
                    stats = status.get("engines", {}).get(model)
                    if stats:
                        total.update({k: v for k, v in stats.items() if k != "max_running_seen"})
                        if "max_running_seen" in stats:
                            seen = max(total["max_running_seen"], stats["max_running_seen"])
                            total["max_running_seen"] = seen
            except Exception as exc:  # diagnostics only
                log(f"could not read engine counters: {exc!r}")
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
            self.sleepers.append(
                self._popen(
                    [sys.executable, str(REPO / "bench" / "sleep_worker.py"), SLEEP_MODEL],
                    f"worker-{SLEEP_MODEL}-{n}.log",
                )
            )
        self.monitor.set(f"workers_{SLEEP_MODEL}", [p.pid for p in self.sleepers])

        def ready() -> bool:
            for proc in self.sleepers:
                if proc.poll() is not None:
                    raise RuntimeError(f"a sleep worker exited with {proc.returncode}; logs in {self.folder}")
            return self.live(SLEEP_MODEL) >= count

        wait_until(ready, 120, f"{count} {SLEEP_MODEL} workers", 0.3)

    def stop(self) -> None:
        procs = [p for p in [*self.sleepers, *self.workers.values(), self.api] if p is not None]
        for proc in procs:  # SIGTERM all first: workers drain in parallel
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                stop_process(proc, timeout=5)
        self.redis.stop()


# -- 1. embeddings ---------------------------------------------------------------------------------


def bench_embeddings(stack: Stack, args: argparse.Namespace, monitor: CpuMonitor) -> None:
    from workers.models.embedding import Embedder

    spec = ModelCatalog.load(stack.models_file).resolve(EMBED_MODEL)
    assert spec is not None
    log("embeddings: loading the in-process Embedder")
    embedder = Embedder.load(spec)
    n = len(SENTENCES)
    for b in (1, 8, 32, 128):
        embedder.embed(SENTENCES[:b])

    # In-process throughput at each batch size (one thread, as the engine thread runs it).
    per_batch: dict[int, dict[str, Any]] = {}
    for batch in args.batch_sizes:

        def encode(_session, _thread, k, batch=batch):
            start = (k * batch) % n
            embedder.embed([SENTENCES[(start + j) % n] for j in range(batch)])
            return batch

        window = run_load(1, min(1.0, args.warmup), args.batch_duration, encode, monitor)
        per_batch[batch] = {"sentences_per_s": rnd(window.value_rate()), "cpu_cores": window.cpu}
        log(f"embeddings: in-process batch {batch}: {window.value_rate():.1f} sentences/s")
    best = max(per_batch, key=lambda b: per_batch[b]["sentences_per_s"] or 0)

    # modelyard throughput: one sentence per request.
    fmt = args.encoding_format

    def embed_body(thread: int, k: int) -> dict[str, Any]:
        return {"model": EMBED_MODEL, "input": SENTENCES[(thread * 31 + k) % n], "encoding_format": fmt}

    def one_embedding(status: int, body: bytes) -> float:
        if status != 200:
            raise RuntimeError(f"HTTP {status}")
        if len(json.loads(body)["data"]) != 1:
            raise RuntimeError("not one embedding")
        return 1.0

    embed_request = stack.call("/v1/embeddings", embed_body, one_embedding)

    log(f"embeddings: modelyard at concurrency {args.embed_concurrency}")
    many = run_load(
        args.embed_concurrency,
        args.warmup,
        args.duration,
        embed_request,
        monitor,
        stack.counters(EMBED_MODEL),
    )
    log(f"embeddings: modelyard {many.rate():.1f} requests/s")
    baseline = per_batch[best]["sentences_per_s"]
    emit(
        measurement(
            "embeddings_throughput",
            "requests/s (one sentence each)",
            baseline,
            f"in-process Embedder.embed, best batch size ({best}), sentences/s",
            many.rate(),
            f"POST /v1/embeddings, 1 sentence per request, concurrency {args.embed_concurrency}",
            "ratio >= 0.8",
            many.rate() >= 0.8 * baseline,
            {
                "inprocess_by_batch_size": per_batch,
                "modelyard": many.summary(),
                "embed_worker_slots": args.embed_slots,
                "encoding_format": fmt,
                "client_cpu_cores": many.cpu.get("bench_process"),
            },
        )
    )

    # Latency at concurrency 1.
    def encode_one(_session, _thread, k):
        embedder.embed([SENTENCES[k % n]])
        return None

    single = run_load(1, min(1.0, args.warmup), args.latency_duration, encode_one, monitor)
    log("embeddings: modelyard at concurrency 1")
    one = run_load(1, args.warmup, args.latency_duration, embed_request, monitor, stack.counters(EMBED_MODEL))
    base_p50 = percentile(single.latencies_ms(), 0.5) or 0.0
    my_p50 = percentile(one.latencies_ms(), 0.5) or 0.0
    emit(
        measurement(
            "embeddings_latency_p50",
            "ms",
            base_p50,
            "in-process Embedder.embed of one sentence, p50",
            my_p50,
            "POST /v1/embeddings, 1 sentence, concurrency 1, p50 (client-side, HTTP included)",
            "modelyard - baseline <= 5 ms",
            my_p50 - base_p50 <= 5.0,
            {"inprocess": single.summary(), "modelyard": one.summary()},
        )
    )


# -- 2. chat ---------------------------------------------------------------------------------------


class _NullSink:
    def publish(self, messages) -> None:
        pass


def bench_chat(stack: Stack, args: argparse.Namespace, monitor: CpuMonitor) -> None:
    from shared.jobs import ChatMessage, GenerateJob, SamplingParams
    from workers.engines import sampling
    from workers.engines.generation import GenerationEngine
    from workers.models.causal_lm import CausalLM

    max_tokens = args.max_tokens
    body_extra: dict[str, Any] = {"ignore_eos": True}
    probe = requests.post(
        stack.url + "/v1/chat/completions",
        json={"model": CHAT_MODEL, "messages": chat_messages(0), "max_tokens": max_tokens, **body_extra},
        timeout=REQUEST_TIMEOUT_S,
    )
    ignore_eos_accepted = probe.status_code == 200
    if not ignore_eos_accepted:
        log(f"chat: the API refused ignore_eos ({probe.status_code}); falling back to temperature 0")
        body_extra = {"temperature": 0}
    params = SamplingParams(
        max_tokens=max_tokens, ignore_eos=ignore_eos_accepted, temperature=1.0 if ignore_eos_accepted else 0.0
    )
    mode = {
        "ignore_eos_accepted": ignore_eos_accepted,
        "sampling": body_extra
        if ignore_eos_accepted
        else {**body_extra, "note": "ignore_eos refused by the API"},
        "max_tokens": max_tokens,
        "chat_worker_slots": args.chat_slots,
    }

    def completion_tokens(status: int, body: bytes) -> float:
        if status != 200:
            raise RuntimeError(f"HTTP {status}")
        return float(json.loads(body)["usage"]["completion_tokens"])

    chat_request = stack.call(
        "/v1/chat/completions",
        lambda _thread, k: {
            "model": CHAT_MODEL,
            "messages": chat_messages(k),
            "max_tokens": max_tokens,
            **body_extra,
        },
        completion_tokens,
    )

    def ttft_request(session: requests.Session, _thread: int, k: int) -> float:
        t0 = time.perf_counter()
        first = None
        with session.post(
            stack.url + "/v1/chat/completions",
            json={
                "model": CHAT_MODEL,
                "messages": chat_messages(k),
                "max_tokens": max_tokens,
                "stream": True,
                **body_extra,
            },
            timeout=REQUEST_TIMEOUT_S + 5,
            stream=True,
        ) as r:
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}")
            for line in r.iter_lines(chunk_size=None):
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                if first is None:
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        raise RuntimeError(chunk["error"].get("code"))
                    if any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                        first = time.perf_counter() - t0
        if first is None:
            raise RuntimeError("no content in the stream")
        return first * 1000

    log("chat: modelyard at concurrency 1")
    chat_counters = stack.counters(CHAT_MODEL)
    c1 = run_load(1, args.warmup, args.duration, chat_request, monitor, chat_counters)
    log(f"chat: modelyard c1 {c1.value_rate():.1f} tokens/s; concurrency {args.chat_concurrency}")
    c16 = run_load(args.chat_concurrency, args.warmup, args.duration, chat_request, monitor, chat_counters)
    log(f"chat: modelyard c{args.chat_concurrency} {c16.value_rate():.1f} tokens/s; streaming TTFT")
    stream = run_load(1, args.warmup, args.latency_duration, ttft_request, monitor, chat_counters)

    # In-process: the project's CausalLM, prefill + first sample (what the engine does for a newcomer).
    spec = ModelCatalog.load(stack.models_file).resolve(CHAT_MODEL)
    assert spec is not None
    log("chat: loading the in-process CausalLM")
    lm = CausalLM.load(spec)
    first_texts: list[str] = []

    def first_token(_session, _thread, k):
        prompt = lm.chat_prompt([ChatMessage(**m) for m in chat_messages(k)])
        logits, _batch = lm.prefill([prompt])
        sampler = sampling.SequenceSampler(params, prompt, None)
        token = sampling.sample(sampling.process(logits, [sampler]), [sampler])[0]
        if len(first_texts) < 200:
            first_texts.append(lm.decode([token]))
        return None

    ttft_in = run_load(1, min(1.0, args.warmup), args.latency_duration, first_token, monitor)
    base_ttft = percentile(ttft_in.latencies_ms(), 0.5) or 0.0
    my_ttft = percentile(stream.values(), 0.5) or 0.0

    # In-process reference: the project's GenerationEngine, continuous batching, no Redis, no HTTP.
    engine = GenerationEngine(lm, spec.model_copy(update={"max_batch_size": args.chat_slots}), _NullSink())
    engine.start()

    def engine_request(_session, _thread, k):
        job = GenerateJob(
            job_id=uuid.uuid4().hex,
            model=CHAT_MODEL,
            reply_to="bench",
            deadline=time.time() + REQUEST_TIMEOUT_S,
            messages=[ChatMessage(**m) for m in chat_messages(k)],
            sampling=params,
        )
        ticket = engine.submit(job, threading.Event())
        if not ticket.wait(REQUEST_TIMEOUT_S):
            raise TimeoutError("in-process engine")
        return float(ticket.outcome().usage.completion_tokens)

    try:
        log("chat: in-process GenerationEngine at 1 and at the same concurrency")
        e1 = run_load(1, min(1.0, args.warmup), args.engine_duration, engine_request, monitor, engine.stats)
        e16 = run_load(
            args.chat_concurrency,
            min(1.0, args.warmup),
            args.engine_duration,
            engine_request,
            monitor,
            engine.stats,
        )
    finally:
        engine.stop()
    engine_stats = engine.stats()

    tokens_c1 = c1.value_rate()
    tokens_c16 = c16.value_rate()
    completion = c1.values() + c16.values()
    emit(
        measurement(
            "chat_throughput_scaling",
            "generated tokens/s",
            tokens_c1,
            "modelyard, POST /v1/chat/completions (not streamed), concurrency 1",
            tokens_c16,
            f"modelyard, same request, concurrency {args.chat_concurrency}",
            "ratio >= 4",
            tokens_c16 >= 4 * tokens_c1,
            {
                **mode,
                "mean_completion_tokens": rnd(sum(completion) / len(completion)) if completion else None,
                "modelyard_c1": c1.summary(),
                f"modelyard_c{args.chat_concurrency}": c16.summary(),
                "inprocess_engine_tokens_per_s": {
                    "c1": rnd(e1.value_rate()),
                    f"c{args.chat_concurrency}": rnd(e16.value_rate()),
                    "ratio": rnd(e16.value_rate() / e1.value_rate(), 3) if e1.value_rate() else None,
                },
            },
        )
    )
    emit(
        measurement(
            "chat_ttft_p50",
            "ms",
            base_ttft,
            "in-process CausalLM: chat template + tokenize + prefill + first sample, p50",
            my_ttft,
            "modelyard, streamed chat, concurrency 1: request sent to first content chunk, p50",
            "modelyard - baseline <= 10 ms",
            my_ttft - base_ttft <= 10.0,
            {
                **mode,
                "inprocess": ttft_in.summary(),
                "modelyard": stream.summary(),
                "modelyard_ttft_ms": {
                    "p50": rnd(my_ttft),
                    "p90": rnd(percentile(stream.values(), 0.9)),
                    "mean": rnd(sum(stream.values()) / len(stream.values())) if stream.values() else None,
                },
                "inprocess_first_tokens_with_text": sum(1 for t in first_texts if t and "\ufffd" not in t),
                "inprocess_first_tokens_sampled": len(first_texts),
            },
        )
    )
    emit(
        measurement(
            "chat_throughput_vs_inprocess",
            "generated tokens/s",
            e16.value_rate(),
            "in-process GenerationEngine (continuous batching, no Redis/HTTP), "
            f"concurrency {args.chat_concurrency}",
            tokens_c16,
            f"modelyard, concurrency {args.chat_concurrency}",
            "none (reference)",
            None,
            {
                "inprocess_engine_c1": e1.summary(),
                f"inprocess_engine_c{args.chat_concurrency}": e16.summary(),
                "inprocess_engine_stats": engine_stats,
                "chat_worker_slots": args.chat_slots,
            },
        )
    )


# -- 3. dispatch -----------------------------------------------------------------------------------


def bench_dispatch(stack: Stack, args: argparse.Namespace, monitor: CpuMonitor) -> None:
    def ok(status: int, _body: bytes) -> float:
        if status != 200:
            raise RuntimeError(f"HTTP {status}")
        return 1.0

    sleep_request = stack.call(
        "/v1/embeddings", lambda _t, _k: {"model": SLEEP_MODEL, "input": "x", "encoding_format": "base64"}, ok
    )

    results: dict[int, Window] = {}
    for count in (1, args.dispatch_workers):
        log(f"dispatch: {count} sleep worker(s)")
        stack.sleep_workers(count)
        results[count] = run_load(
            args.dispatch_concurrency,
            args.warmup,
            args.duration,
            sleep_request,
            monitor,
            stack.counters(SLEEP_MODEL),
        )
        log(f"dispatch: {count} worker(s): {results[count].rate():.1f} requests/s")
    one, many = results[1], results[args.dispatch_workers]
    ideal = 1000 / SLEEP_MS
    emit(
        measurement(
            "dispatch_scaling",
            "requests/s",
            one.rate(),
            f"1 worker process of a model that sleeps {SLEEP_MS} ms per batch (1 job per batch)",
            many.rate(),
            f"{args.dispatch_workers} such worker processes",
            f"ratio >= 7 (ideal {args.dispatch_workers})",
            many.rate() >= 7 * one.rate(),
            {
                "ideal_per_worker_per_s": ideal,
                "efficiency_1_worker": rnd(one.rate() / ideal, 3),
                f"efficiency_{args.dispatch_workers}_workers": rnd(
                    many.rate() / (ideal * args.dispatch_workers), 3
                ),
                "client_concurrency": args.dispatch_concurrency,
                "one_worker": one.summary(),
                f"{args.dispatch_workers}_workers": many.summary(),
            },
        )
    )


# -- main ------------------------------------------------------------------------------------------


def wait_quiet(limit_s: float, threshold: float = 0.3, sample_s: float = 3.0) -> dict[str, Any]:
    """Wait (at most ``limit_s``) until the shared machine is quiet: under ``threshold`` busy cores
    over ``sample_s``. Returns what was seen, for the meta line."""
    waited_from = time.monotonic()
    busy = None
    for _ in range(int(limit_s / sample_s) + 1):
        before = psutil.cpu_times()
        time.sleep(sample_s)
        after = psutil.cpu_times()
        idle = (after.idle - before.idle) + (getattr(after, "iowait", 0) - getattr(before, "iowait", 0))
        busy = (sum(after) - sum(before) - idle) / sample_s
        if busy < threshold or time.monotonic() - waited_from >= limit_s:
            break
        log(f"machine busy ({busy:.2f} cores used by others); waiting for it to quiet down")
    return {
        "busy_cores_before_start": rnd(busy),
        "quiet": busy is not None and busy < threshold,
        "waited_s": round(time.monotonic() - waited_from, 1),
    }


def meta(args: argparse.Namespace, quiet: dict[str, Any]) -> dict[str, Any]:
    def run(*argv: str) -> str:
        try:
            return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    import torch

    cpu_model = ""
    try:
        cpu_model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    versions = {}
    packages = ("torch", "transformers", "sentence-transformers", "rq", "redis", "hiredis")
    packages += ("flask", "gunicorn")
    for package in packages:
        try:
            from importlib.metadata import version

            versions[package] = version(package)
        except Exception:
            versions[package] = None
    return {
        "type": "meta",
        "command": shlex.join([sys.executable, *sys.argv]),
        "cwd": os.getcwd(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_head": run("git", "rev-parse", "HEAD"),
        "git_dirty_files": len(run("git", "--no-optional-locks", "status", "--short").splitlines()),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": cpu_model,
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
            "redis_server": run(redis_server_binary(), "--version"),
            **quiet,
        },
        "versions": versions,
        "settings": dict(vars(args)),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = {spec.name: spec for spec in ModelCatalog.load(REPO / "models.yaml")}
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="about 3 s per measurement (smoke test)")
    parser.add_argument("--duration", type=float, help="seconds per modelyard window (default 12, quick 3)")
    parser.add_argument(
        "--warmup", type=float, help="seconds of warm-up before each window (default 3, quick 1)"
    )
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--embed-concurrency", type=int, default=64)
    parser.add_argument("--chat-concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--dispatch-workers", type=int, default=8)
    parser.add_argument("--dispatch-concurrency", type=int, default=32)
    parser.add_argument("--batch-sizes", default="1,8,32,64,128", help="in-process embedding batch sizes")
    parser.add_argument(
        "--embed-slots",
        type=int,
        default=defaults[EMBED_MODEL].max_batch_size,
        help="max_batch_size of the embedding worker (default: models.yaml's)",
    )
    parser.add_argument(
        "--chat-slots",
        type=int,
        default=defaults[CHAT_MODEL].max_batch_size,
        help="max_batch_size of the chat worker (default: models.yaml's)",
    )
    parser.add_argument(
        "--chat-threads",
        type=int,
        default=defaults[CHAT_MODEL].threads,
        help="torch threads of the chat worker (default: models.yaml's)",
    )
    parser.add_argument(
        "--encoding-format",
        choices=("float", "base64"),
        default="base64",
        help="embeddings encoding_format (base64 is what the openai SDK sends)",
    )
    parser.add_argument(
        "--client",
        choices=("raw", "requests"),
        default="raw",
        help="HTTP client of the non-streamed requests: bench/http_load.py's lean one (~0.1 ms of CPU "
        "per request here), or requests (~1 ms, taken from the 2 cores the stack runs on)",
    )
    parser.add_argument("--log-level", default="WARNING", help="MODELYARD_LOG_LEVEL of the stack")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        help="seconds to wait at most for the shared machine to be idle before starting "
        "(default 120, quick 0)",
    )
    parser.add_argument(
        "--worker-omp-threads",
        type=int,
        help="OMP_NUM_THREADS for the stack's processes (default: unset, torch's own choice, as bin/up)",
    )
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 3.0 if args.quick else 12.0
    if args.wait_quiet is None:
        args.wait_quiet = 0.0 if args.quick else 120.0
    if args.warmup is None:
        args.warmup = 1.0 if args.quick else 3.0
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    # Derived windows: the in-process sweep and the c1 latency runs are shorter than the throughput ones.
    args.batch_duration = max(1.0, args.duration / 3)
    args.latency_duration = max(2.0, args.duration * 2 / 3)
    args.engine_duration = max(2.0, args.duration / 2)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    quiet = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else {}
    emit(meta(args, quiet))
    monitor = CpuMonitor()
    folder = Path(tempfile.mkdtemp(prefix="modelyard-bench-"))
    stack = Stack(folder, args, monitor)
    failed = 0
    started = time.monotonic()
    try:
        log(f"starting the stack (logs in {folder})")
        stack.start()
        log(f"stack up in {time.monotonic() - started:.1f}s at {stack.url}")
        sections = {"embeddings": bench_embeddings, "chat": bench_chat, "dispatch": bench_dispatch}
        for name in args.only:
            try:
                sections[name](stack, args, monitor)
            except Exception as exc:  # one broken section must not hide the others' figures
                failed += 1
                log(f"{name} failed: {exc!r}")
                emit({"measurement": name, "error": f"{type(exc).__name__}: {exc}", "logs": str(folder)})
    finally:
        log("stopping the stack")
        stack.stop()
    emit(
        {
            "type": "end",
            "total_s": round(time.monotonic() - started, 1),
            "logs": str(folder),
            "sections_failed": failed,
        }
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
