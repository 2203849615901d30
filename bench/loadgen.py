"""The load generator of bench/bench_serving.py: clients that send requests back to back for a
window, what each request took, and the CPU and engine counters over the window."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import http_load  # bench/, the script's folder
import psutil
import requests
from report import log, rnd
from workload import REQUEST_TIMEOUT_S

#: Upper bound on requests per client thread in one window (the windows are bounded in time too).
MAX_REQUESTS_PER_THREAD = 200_000


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


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
