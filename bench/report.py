"""bench/bench_serving.py's output: progress on stderr, JSON lines on stdout (the run's ``meta``, one
line per measurement), and the state of the machine the figures were taken on."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from harness import REPO, redis_server_binary


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def rnd(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def spread(values: list[float]) -> dict[str, float | None]:
    """The minimum, median and maximum of repeated runs (None for none), rounded as :func:`rnd`."""
    if not values:
        return {"min": None, "median": None, "max": None}
    return {"min": rnd(min(values)), "median": rnd(statistics.median(values)), "max": rnd(max(values))}


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
