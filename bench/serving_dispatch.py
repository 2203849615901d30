"""bench/bench_serving.py, section 3: dispatch, a model that sleeps 50 ms per batch (one job per
batch), 1 worker process against 8."""

from __future__ import annotations

import argparse

from loadgen import CpuMonitor, Window, run_load  # bench/, the script's folder
from report import emit, log, measurement, rnd
from serving_stack import Stack
from workload import SLEEP_MODEL, SLEEP_MS


def run(stack: Stack, args: argparse.Namespace, monitor: CpuMonitor) -> None:
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
