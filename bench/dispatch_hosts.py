"""Dispatch across hosts (issue 16, a script, not a test): the same number of sleep worker processes
all on this host, against spread over namespace hosts, interleaved.

    .venv/bin/python bench/dispatch_hosts.py            # 3 rounds of each layout, ~2 minutes
    .venv/bin/python bench/dispatch_hosts.py --quick    # 1 round, 3 s windows: a smoke test
    .venv/bin/python bench/dispatch_hosts.py --rounds 4 --workers 6 --concurrency 32

Needs root and iproute2 (``harness/netns.py``). It opens a bridge and ``--hosts`` network namespace
hosts on a /24 of their own (each with its own address and a dotted hostname, as
tests/e2e/test_multihost.py does); redis-server (with a password: Redis refuses clients beyond
loopback without one) listens on the bridge address of this host, where every worker of both layouts
reaches it; the API (bin/api) listens on 127.0.0.1, where the load goes.

Each window starts ``--workers`` sleep workers (bench/sleep_worker.py: the project's bin/worker whose
model sleeps 50 ms per job, one job per batch), waits until all of them beat with the expected
hostname, drives ``--concurrency`` keep-alive clients of ``POST /v1/embeddings`` through the API
(bench/loadgen.py's ``run_load`` on bench/http_load.py's client), then stops the workers:

- ``one-host``: every worker in the root namespace (this host);
- ``spread``: the workers dealt round-robin over the namespace hosts (2 each by default).

The layouts alternate A/B/A/B for ``--rounds`` rounds. Stdout: the run's ``meta`` (command, date, git
HEAD, machine), one JSON line per window (requests/s, latency p50/p90/p99, errors, CPU of each group,
the jobs each host finished, from heartbeats, so approximate), a summary per layout (min/median/max)
and a ``dispatch_across_hosts`` line with the ratio spread/one-host. Progress goes to stderr.

Every host shares this machine's cores: the spread layout shows what the network path between hosts
and the workers' per-host identity cost, not the compute more machines would add. Everything the
script starts (processes, by PID; namespaces, links and the bridge) is removed at the end, on errors
and on SIGTERM too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import http_load  # bench/, the script's folder
from loadgen import CpuMonitor, Window, run_load
from report import emit, log, measurement, meta, spread, wait_quiet
from serving_stack import HEARTBEAT_TTL_S, engine_totals
from workload import REQUEST_TIMEOUT_S, SLEEP_ENTRY, SLEEP_MODEL, SLEEP_MS, SLEEP_WORKER

from harness import (
    RedisServer,
    WorkerProcess,
    free_port,
    live_models,
    start_api,
    stop_process,
    stop_processes,
)
from harness.netns import Network, why_not

LAYOUTS = ("one-host", "spread")
#: Redis's password: beyond loopback it refuses clients without one (protected mode).
PASSWORD = "dispatch-hosts-pw"
#: /24s tried in turn for the namespace hosts; the first one no interface of this machine uses wins
#: (tests/e2e/test_multihost.py uses harness.netns's default, 10.231.17, and may run meanwhile).
SUBNETS = tuple(f"10.231.{n}" for n in range(41, 61))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 round, 3 s windows (smoke test)")
    parser.add_argument("--rounds", type=int, help="windows of each layout, interleaved (default 3, quick 1)")
    parser.add_argument("--duration", type=float, help="seconds per measured window (default 10, quick 3)")
    parser.add_argument(
        "--warmup", type=float, help="seconds of load before each window (default 3, quick 1)"
    )
    parser.add_argument("--workers", type=int, default=6, help="sleep worker processes in either layout")
    parser.add_argument("--hosts", type=int, default=3, help="namespace hosts of the spread layout")
    parser.add_argument("--concurrency", type=int, default=32, help="keep-alive client connections")
    parser.add_argument("--subnet", help="first three octets of the hosts' /24 (default: a free 10.231.x)")
    parser.add_argument("--log-level", default="WARNING", help="MODELYARD_LOG_LEVEL of the stack")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        help="seconds to wait at most for the shared machine to be idle first (default 60, quick 0)",
    )
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.duration is None:
        args.duration = 3.0 if args.quick else 10.0
    if args.warmup is None:
        args.warmup = 1.0 if args.quick else 3.0
    if args.wait_quiet is None:
        args.wait_quiet = 0.0 if args.quick else 60.0
    if args.workers < 1 or args.hosts < 1 or args.rounds < 1:
        parser.error("--workers, --hosts and --rounds must be at least 1")
    return args


def free_subnet() -> str:
    """The first of ``SUBNETS`` that no address or route of this machine is in."""
    used = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, timeout=30
    ).stdout
    used += subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True, timeout=30).stdout
    for subnet in SUBNETS:
        if f"{subnet}." not in used:
            return subnet
    raise RuntimeError(f"every subnet of {SUBNETS[0]}.0/24..{SUBNETS[-1]}.0/24 is in use here")


class Fleet:
    """The sleep workers of one window, in one layout, and the heartbeats they write."""

    def __init__(self, network: Network, redis: RedisServer, env: dict[str, str], folder: Path) -> None:
        self.network = network
        self.redis = redis
        self.env = env
        self.folder = folder
        self.workers: list[WorkerProcess] = []
        #: The hostname each worker must report, by pid.
        self.expected: dict[int, str] = {}
        self.started = 0

    def start(self, layout: str, count: int, api_url: str) -> None:
        """``count`` sleep workers in ``layout``; returns once all of them beat with their hostnames
        and the API counts exactly ``count`` live workers of the model (the last window's are gone)."""
        for n in range(count):
            if layout == "one-host":
                hostname, program = socket.gethostname(), SLEEP_WORKER
            else:
                host = self.network.members[n % len(self.network.members)]
                hostname, program = host.hostname, tuple(host.command(list(SLEEP_WORKER)))
            log_path = self.folder / f"worker-{self.started:03d}-{hostname}.log"
            self.started += 1
            worker = WorkerProcess(self.env, [SLEEP_MODEL], log_path, program=program)
            self.workers.append(worker)
            self.expected[worker.pid] = hostname
        deadline = time.monotonic() + 180
        for worker in self.workers:
            worker.wait_ready(self.redis, timeout=max(1.0, deadline - time.monotonic()))
            status = worker.status(self.redis) or {}
            if status.get("host") != self.expected[worker.pid]:
                raise RuntimeError(
                    f"worker {worker.pid} reports host {status.get('host')!r},"
                    f" not {self.expected[worker.pid]!r}"
                )
        while live_models(api_url).get(SLEEP_MODEL, 0) != count:
            for worker in self.workers:
                worker.check_running()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the API does not count {count} live {SLEEP_MODEL} workers: {live_models(api_url)}"
                )
            time.sleep(0.3)

    def stop(self) -> None:
        """SIGTERM every worker at once (they drain side by side), SIGKILL after 30 s; by PID."""
        stop_processes([w.proc for w in self.workers], timeout=30)
        for worker in self.workers:
            worker.stop()  # closes its log
        self.workers.clear()
        self.expected.clear()

    def counters(self, seen: list[dict[str, int]]) -> Callable[[], dict[str, float]]:
        """A reader of the model's engine counters summed over the live heartbeats (for
        ``run_load``'s engine figures); it also appends each read's jobs done per host to ``seen``."""

        def read() -> dict[str, float]:
            total, per_host = engine_totals(self.redis, SLEEP_MODEL, self.expected)
            seen.append(per_host)
            return total

        return read


def window_line(
    round_: int, layout: str, args: argparse.Namespace, window: Window, seen: list[dict[str, int]]
) -> dict[str, Any]:
    before, after = (seen[0], seen[-1]) if seen else ({}, {})
    return {
        "type": "window",
        "round": round_,
        "layout": layout,
        "workers": args.workers,
        "hosts": 1 if layout == "one-host" else args.hosts,
        **window.summary(),
        # From heartbeats (a beat every HEARTBEAT_TTL_S / 3 s): approximate.
        "jobs_per_host_over_window": {h: after[h] - before.get(h, 0) for h in sorted(after)},
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def summarize(lines: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    medians: dict[str, dict[str, float | None]] = {}
    for layout in LAYOUTS:
        rows = lines[layout]
        summary = {
            "type": "summary",
            "layout": layout,
            "windows": len(rows),
            "requests_per_s": spread([r["requests_per_s"] for r in rows if r["requests_per_s"] is not None]),
            "p50_ms": spread([r["latency_ms"]["p50"] for r in rows if r["latency_ms"]["p50"] is not None]),
            "p99_ms": spread([r["latency_ms"]["p99"] for r in rows if r["latency_ms"]["p99"] is not None]),
            "errors": sum(sum(r["errors"].values()) for r in rows),
        }
        medians[layout] = {k: summary[k]["median"] for k in ("requests_per_s", "p50_ms", "p99_ms")}
        emit(summary)
    one, many = medians["one-host"], medians["spread"]

    def ratio(key: str) -> float | None:
        return round(many[key] / one[key], 3) if one[key] and many[key] is not None else None

    emit(
        measurement(
            "dispatch_across_hosts",
            "requests/s",
            one["requests_per_s"] or 0.0,
            f"{args.workers} sleep workers ({SLEEP_MS} ms per job) all on this host,"
            f" median of {args.rounds} windows",
            many["requests_per_s"] or 0.0,
            f"the same {args.workers} spread over {args.hosts} namespace hosts,"
            f" median of {args.rounds} windows",
            "none (how it is shown): the hosts share this machine's cores",
            None,
            {
                "ideal_requests_per_s": args.workers * 1000 / SLEEP_MS,
                "client_concurrency": args.concurrency,
                "ratio_p50": ratio("p50_ms"),
                "ratio_p99": ratio("p99_ms"),
                "medians": medians,
            },
        )
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = why_not()
    if problem:
        log(f"cannot run: {problem}")
        return 2
    # SIGTERM unwinds like an error, so the cleanup below runs (processes, namespaces).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    quiet = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else {}
    folder = Path(tempfile.mkdtemp(prefix="modelyard-dispatch-hosts-"))
    monitor = CpuMonitor()
    started = time.monotonic()
    lines: dict[str, list[dict[str, Any]]] = {layout: [] for layout in LAYOUTS}
    with contextlib.ExitStack() as cleanup:
        network = cleanup.enter_context(Network(hosts=args.hosts, subnet=args.subnet or free_subnet()))
        log(f"hosts: {', '.join(f'{h.hostname} at {h.address}' for h in network.members)} (logs in {folder})")
        redis = RedisServer(
            port=free_port(),
            workdir=folder,
            host=network.first_host,
            args=("--requirepass", PASSWORD),
            userinfo=f":{PASSWORD}",
        )
        cleanup.callback(redis.stop)
        redis.start()
        assert redis.proc is not None
        monitor.set("redis", [redis.proc.pid])
        models_file = folder / "models.yaml"
        models_file.write_text(f"models:\n  - {SLEEP_ENTRY}\n")
        env = {
            **os.environ,
            "MODELYARD_REDIS_URL": redis.url,
            "MODELYARD_MODELS_FILE": str(models_file),
            "MODELYARD_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT_S),
            "MODELYARD_LOG_LEVEL": args.log_level,
            "MODELYARD_HEARTBEAT_TTL": str(HEARTBEAT_TTL_S),
            "HF_HUB_OFFLINE": "1",
        }
        env.pop("REDIS_URL", None)
        api, api_log = start_api(env, folder / "api.log")
        cleanup.callback(api_log.close)
        cleanup.callback(stop_process, api.proc)
        monitor.set("api", [api.proc.pid])
        fleet = Fleet(network, redis, env, folder)
        cleanup.callback(fleet.stop)

        record = meta(args, quiet)
        record["network"] = {
            "first_host": network.first_host,
            "redis": f"{network.first_host}:{redis.port}",
            "api": api.url,
            "hosts": {h.hostname: h.address for h in network.members},
            "this_host": socket.gethostname(),
        }
        emit(record)

        def ok(status: int, body: bytes) -> float:
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {body[:100]!r}")
            return 1.0

        request = http_load.post_json(
            "127.0.0.1",
            api.port,
            "/v1/embeddings",
            {"model": SLEEP_MODEL, "input": "x", "encoding_format": "base64"},
        )
        call = http_load.RawCall("127.0.0.1", api.port, lambda _i, _n: request, ok)
        for round_ in range(args.rounds):
            for layout in LAYOUTS:
                log(f"round {round_ + 1}/{args.rounds}, {layout}: starting {args.workers} sleep workers")
                fleet.start(layout, args.workers, api.url)
                monitor.set("sleep_workers", [w.pid for w in fleet.workers])
                seen: list[dict[str, int]] = []
                window = run_load(
                    args.concurrency, args.warmup, args.duration, call, monitor, fleet.counters(seen)
                )
                line = window_line(round_, layout, args, window, seen)
                lines[layout].append(line)
                emit(line)
                log(
                    f"round {round_ + 1}, {layout}: {window.rate():.1f} requests/s, "
                    f"p50 {line['latency_ms']['p50']} ms, p99 {line['latency_ms']['p99']} ms, "
                    f"errors {line['errors']}"
                )
                fleet.stop()
        summarize(lines, args)
        log("stopping the stack")
    emit({"type": "end", "total_s": round(time.monotonic() - started, 1), "logs": str(folder)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
