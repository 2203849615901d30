"""A/B of the API's serving (gunicorn's gevent worker against its threaded one), interleaved.

    .venv/bin/python bench/api_serving_ab.py                    # 3 rounds, ~4 minutes
    .venv/bin/python bench/api_serving_ab.py --rounds 5 --duration 15

One redis-server and one sleep worker (bench/sleep_worker.py: a model whose batch sleeps 1 ms, so
the stack's own cost is what is measured) stay up; each round starts bin/api once with
``MODELYARD_API_WORKER_CLASS=gevent`` and once with ``gthread`` (512 threads, the old default), in
alternating order, and drives each with bench/http_load.py's keep-alive client:

- ``embed``: ``POST /v1/embeddings`` on the sleep model, the whole dispatch path (validation, rq
  enqueue, the reply over pub/sub), at ``--concurrency`` connections;
- ``live``: ``GET /health/live``, HTTP serving alone.

Each load runs twice: closed loop (``--concurrency`` connections back to back: the most each class
serves) and open loop at a fixed rate (``--rates``: the latency each class gives the same load).
Each window prints a JSON line: requests/s, p50/p99 latency (ms), errors, and the API process's CPU
per request (ms, from psutil: less noisy than throughput on a shared machine). The last lines give
each figure's median and range (min..max) over the rounds per worker class.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import http_load  # bench/, the script's folder
import psutil
from workload import SLEEP_WORKER

from harness import RedisServer, WorkerProcess, free_port, live_models, start_api, stop_process, wait_until

MODEL = "sleep-1ms"
CLASSES = ("gevent", "gthread")


def _get(host: str, port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: keep-alive\r\n\r\n".encode()


def _ok(status: int, body: bytes) -> float | None:
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {body[:100]!r}")
    return None


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


async def _paced(call: http_load.RawCall, rate: float, duration: float, record: http_load.Recorder) -> None:
    """Open loop: a request every ``1/rate`` s, each on a free keep-alive connection (a new one when
    none is free). Latency counts from the request's scheduled time, so a stalled server is charged
    for the requests it made wait, not only for the ones it answered."""
    free: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    tasks: set[asyncio.Task] = set()

    async def one(n: int, due: float) -> None:
        conn = free.pop() if free else await asyncio.open_connection(call.host, call.port)
        error = None
        try:
            conn[1].write(call.request(0, n))
            status, body = await http_load._read_reply(conn[0])
            call.value(status, body)
            free.append(conn)
        except Exception as exc:  # counted, never fatal to the run
            error = f"{type(exc).__name__}: {exc}"
            conn[1].close()
        record(due, time.perf_counter(), None, error)

    start = time.perf_counter()
    for n in range(int(rate * duration)):
        due = start + n / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        task = asyncio.ensure_future(one(n, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    for _, writer in free:
        writer.close()


def window(
    call: http_load.RawCall, concurrency: int, duration: float, api_pids: list[int], rate: float | None = None
) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def record(start: float, end: float, value: float | None, error: str | None) -> None:
        with lock:
            if error is None:
                latencies.append(end - start)
            else:
                errors.append(error)

    cpu0, t0 = _cpu(api_pids), time.perf_counter()
    if rate is None:
        http_load.drive(concurrency, call, time.perf_counter() + duration, record)
    else:
        asyncio.run(_paced(call, rate, duration, record))
    cpu1, t1 = _cpu(api_pids), time.perf_counter()
    latencies.sort()
    n = len(latencies)
    return {
        "rps": round(n / (t1 - t0), 1),
        "p50_ms": round(1000 * latencies[n // 2], 2) if n else None,
        "p90_ms": round(1000 * latencies[min(n - 1, int(n * 0.9))], 2) if n else None,
        "p99_ms": round(1000 * latencies[min(n - 1, int(n * 0.99))], 2) if n else None,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "api_cpu_ms_per_req": round(1000 * (cpu1 - cpu0) / n, 3) if n else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per window")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=64, help="connections of the closed-loop windows")
    parser.add_argument(
        "--rates",
        default="embed=100,live=600",
        help="requests/s of the open-loop windows (latency at a load both classes sustain)",
    )
    args = parser.parse_args()
    rates = {name: float(rate) for name, _, rate in (item.partition("=") for item in args.rates.split(","))}

    folder = Path(tempfile.mkdtemp(prefix="modelyard-ab-"))
    redis = RedisServer(port=free_port(), workdir=folder)
    models = folder / "models.yaml"
    models.write_text(
        f"models:\n  - {{name: {MODEL}, kind: embedding, source: 'sleep:1', max_batch_size: 8,"
        " max_queue: 4096, coalesce_inputs: 1}\n"
    )
    env = {
        **os.environ,
        "MODELYARD_REDIS_URL": redis.url,
        "MODELYARD_MODELS_FILE": str(models),
        "MODELYARD_LOG_LEVEL": "WARNING",
    }
    redis.start()
    worker = WorkerProcess(env, [MODEL], folder / "worker.log", program=SLEEP_WORKER)
    results: dict[tuple[str, str], list[dict]] = {}
    print(json.dumps({"meta": vars(args), "cpus": psutil.cpu_count(), "folder": str(folder)}), flush=True)
    try:
        for round_ in range(args.rounds):
            order = CLASSES if round_ % 2 == 0 else CLASSES[::-1]
            for worker_class in order:
                api, api_log = start_api(
                    {**env, "MODELYARD_API_WORKER_CLASS": worker_class},
                    folder / f"api-{round_}-{worker_class}.log",
                )
                port = api.port

                def serving(url: str = api.url) -> bool:
                    return live_models(url).get(MODEL, 0) >= 1

                try:
                    wait_until(serving, 120, "the sleep worker", 0.3)
                    api_process = psutil.Process(api.proc.pid)
                    pids = [api_process.pid, *(c.pid for c in api_process.children(recursive=True))]
                    payload = {"model": MODEL, "input": "a cat sits on the mat"}
                    embed = http_load.post_json("127.0.0.1", port, "/v1/embeddings", payload)
                    live = _get("127.0.0.1", port, "/health/live")
                    calls = {
                        "embed": http_load.RawCall("127.0.0.1", port, lambda i, k, raw=embed: raw, _ok),
                        "live": http_load.RawCall("127.0.0.1", port, lambda i, k, raw=live: raw, _ok),
                    }
                    for name, call in calls.items():
                        window(call, args.concurrency, args.warmup, pids)
                        for load, rate in (
                            (f"{name} c{args.concurrency}", None),
                            (f"{name} {rates[name]:g}/s", rates[name]),
                        ):
                            row = window(call, args.concurrency, args.duration, pids, rate)
                            results.setdefault((worker_class, load), []).append(row)
                            line = {"round": round_, "class": worker_class, "load": load, **row}
                            line["loadavg_1m"] = round(os.getloadavg()[0], 2)  # the machine is shared
                            print(json.dumps(line), flush=True)
                finally:
                    stop_process(api.proc)
                    api_log.close()
        for (worker_class, name), rows in sorted(results.items(), key=lambda item: (item[0][1], item[0][0])):
            summary = {"summary": name, "class": worker_class, "windows": len(rows)}
            for key in ("rps", "p50_ms", "p90_ms", "p99_ms", "api_cpu_ms_per_req"):
                values = [row[key] for row in rows if row[key] is not None]
                if values:
                    median = statistics.median(values)
                    summary[key] = {"median": median, "min": min(values), "max": max(values)}
            summary["errors"] = sum(row["errors"] for row in rows)
            print(json.dumps(summary), flush=True)
    finally:
        worker.stop()
        redis.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
